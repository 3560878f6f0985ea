"""The command line: commands, output, exit codes, and discovery of installed distributions."""

from __future__ import annotations

import json

import pytest

from mfm_framework.cli import main

from .conftest import REPO, make_distribution, run_cli

GOOD = '[run]\nname = "good"\n'


def test_help_and_version_do_not_import_torch(tmp_path):
    code = (
        "import sys, contextlib, io\n"
        "from mfm_framework.cli import main\n"
        "with contextlib.redirect_stdout(io.StringIO()):\n"
        "    rc = main(['--version'])\n"
        "    try:\n"
        "        main(['--help'])\n"
        "    except SystemExit:\n"
        "        pass\n"
        "assert rc == 0\n"
        "assert 'torch' not in sys.modules, 'mfm --help imported torch'\n"
    )
    import subprocess
    import sys

    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path)
    assert result.returncode == 0, result.stderr


def test_version_lists_plugins(capsys):
    assert main(["--version"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("mfm-framework ")
    assert "plugin mfm-interpolants: mfm-framework" in out


def test_no_command_prints_help_and_exits_2(capsys):
    assert main([]) == 2
    assert "usage: mfm" in capsys.readouterr().out


def test_bad_arguments_exit_2(capsys):
    with pytest.raises(SystemExit) as info:
        main(["run"])
    assert info.value.code == 2


def test_plugins_lists_first_party_components(use_system, capsys):
    assert main(["plugins"]) == 0
    out = capsys.readouterr().out
    assert "mfm-interpolants" in out and "interpolants: linear, trigonometric" in out
    assert "integrators: euler, heun, euler-maruyama" in out
    assert main(["plugins", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert any(p["name"] == "test-options" for p in data["plugins"])


def test_ls(use_system, capsys):
    assert main(["ls", "interpolants"]) == 0
    out = capsys.readouterr().out
    assert "linear" in out and "trigonometric" in out and "euler" not in out
    assert main(["ls", "integrators", "euler*"]) == 0
    out = capsys.readouterr().out
    assert "euler-maruyama" in out and "heun" not in out
    assert main(["ls", "interpolant", "scaled", "-v"]) == 0
    out = capsys.readouterr().out
    assert "scale" in out and "float" in out and "1.0" in out
    assert main(["ls"]) == 0
    assert "heun" in capsys.readouterr().out
    assert main(["ls", "rewards", "no-such-reward*"]) == 0
    assert "no rewards matching 'no-such-reward*'" in capsys.readouterr().out


def test_ls_unknown_kind_exits_2(use_system, capsys):
    assert main(["ls", "interpolnts"]) == 2
    assert "did you mean 'interpolants'" in capsys.readouterr().err


def test_validate_reports_each_file(use_system, write, capsys):
    good = write("good.toml", GOOD)
    bad = write("bad.toml", "[run]\nseed = 'x'\n[nope]\n")
    assert main(["validate", str(good)]) == 0
    assert capsys.readouterr().out.strip() == f"{good}: ok"
    assert main(["validate", str(good), str(bad)]) == 2
    captured = capsys.readouterr()
    assert f"{good}: ok" in captured.out
    assert "$.run.seed" in captured.err and "$.nope" in captured.err
    assert "Traceback" not in captured.err
    assert "1 of 2 specs are invalid" in captured.err


def test_validate_print_shows_the_resolved_spec(use_system, write, capsys):
    assert main(["validate", "--print", str(write("good.toml", GOOD)), "--set", "run.seed=5"]) == 0
    out = capsys.readouterr().out
    assert "seed = 5" in out and '[model.interpolant]\nkind = "linear"' in out


def test_run_with_a_malformed_spec_exits_2_without_traceback(use_system, write, tmp_path, capsys):
    spec = write("bad.toml", "[run\n")
    assert main(["run", str(spec), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "TOML syntax error" in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()


def test_run_with_a_bad_set_exits_2(use_system, write, tmp_path, capsys):
    spec = write("good.toml", GOOD)
    assert main(["run", str(spec), "--out", str(tmp_path / "o"), "--set", "run.seeds=1"]) == 2
    assert "--set run.seeds=1" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_debug_shows_the_traceback(use_system, tmp_path, capsys):
    assert main(["run", str(tmp_path / "missing.toml"), "--debug"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" in err and "no such file" in err


# ----------------------------------------------------------------------------- real discovery
PLUGIN_SOURCE = """
import torch
from mfm_framework import hookimpl
from mfm_framework.interfaces import Interpolant

class Squared(Interpolant):
    '''alpha = 1 - t^2, beta = t^2 (a throwaway test schedule).'''
    name = "{name}"
    def alpha(self, t): return 1 - t**2
    def beta(self, t): return t**2
    def dalpha(self, t): return -2 * t
    def dbeta(self, t): return 2 * t
    def time_from_snr(self, snr): return (1 / (1 + 1 / snr.sqrt())).sqrt()

@hookimpl
def mfm_interpolants():
    return [Squared]
"""


@pytest.fixture
def site(tmp_path):
    return tmp_path / "site"


def test_an_installed_distribution_is_discovered_through_its_entry_point(site, tmp_path):
    make_distribution(site, "throwaway-plugin", "1.2.3", {"throwaway_mod": PLUGIN_SOURCE.format(name="squared")}, {"throwaway": "throwaway_mod"})
    result = run_cli("plugins", "--json", cwd=tmp_path, pythonpath=site)
    assert result.returncode == 0, result.stderr
    plugin = next(p for p in json.loads(result.stdout)["plugins"] if p["name"] == "throwaway")
    assert plugin["distribution"] == "throwaway-plugin" and plugin["version"] == "1.2.3"
    assert plugin["components"] == {"interpolants": ["squared"]}
    (tmp_path / "s.toml").write_text('[model.interpolant]\nkind = "squared"\n')
    assert run_cli("validate", "s.toml", cwd=tmp_path, pythonpath=site).returncode == 0
    blocked = run_cli("validate", "s.toml", cwd=tmp_path, pythonpath=site, env={"MFM_BLOCK_PLUGINS": "throwaway"})
    assert blocked.returncode == 2 and "unknown interpolant 'squared'" in blocked.stderr


def test_a_duplicate_from_another_distribution_names_both(site, tmp_path):
    make_distribution(site, "dup-dist", "0.1", {"dup_mod": PLUGIN_SOURCE.format(name="linear")}, {"dup": "dup_mod"})
    (tmp_path / "s.toml").write_text(GOOD)
    result = run_cli("validate", "s.toml", cwd=tmp_path, pythonpath=site)
    assert result.returncode == 2
    assert "interpolant 'linear' is registered twice" in result.stderr
    assert "mfm-framework" in result.stderr and "dup-dist 0.1" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_broken_distribution_is_reported_and_does_not_break_runs(site, tmp_path):
    make_distribution(site, "broken-dist", "0.0.1", {"broken_mod": "import no_such_dependency_xyz\n"}, {"broken": "broken_mod"})
    listed = run_cli("plugins", cwd=tmp_path, pythonpath=site)
    assert listed.returncode == 0
    assert "broken" in listed.stdout and "failed" in listed.stdout
    assert "ModuleNotFoundError: No module named 'no_such_dependency_xyz'" in listed.stdout
    (tmp_path / "s.toml").write_text(GOOD)
    ran = run_cli("run", "s.toml", cwd=tmp_path, pythonpath=site)
    assert ran.returncode == 0, ran.stderr
    assert json.loads((tmp_path / "runs" / "good" / "summary.json").read_text())["status"] == "complete"
    plugins = json.loads((tmp_path / "runs" / "good" / "plugins.json").read_text())
    assert any(p["name"] == "broken" and p["status"] == "failed" for p in plugins["plugins"])


def test_a_failure_during_the_run_exits_1_and_is_recorded(site, tmp_path):
    source = "from mfm_framework import hookimpl\n@hookimpl\ndef mfm_run_start(run):\n    raise RuntimeError('logger exploded')\n"
    make_distribution(site, "bad-logger", "0.1", {"bad_logger": source}, {"bad-logger": "bad_logger"})
    (tmp_path / "s.toml").write_text(GOOD)
    result = run_cli("run", "s.toml", cwd=tmp_path, pythonpath=site)
    assert result.returncode == 1
    assert "RuntimeError: logger exploded" in result.stderr and "Traceback" not in result.stderr
    summary = json.loads((tmp_path / "runs" / "good" / "summary.json").read_text())
    assert summary["status"] == "failed" and "logger exploded" in summary["error"]


def test_examples_validate(use_system, capsys):
    specs = sorted(str(p) for p in (REPO / "examples").glob("*.toml"))
    assert specs, "examples/ has no specs"
    assert main(["validate", *specs]) == 0
