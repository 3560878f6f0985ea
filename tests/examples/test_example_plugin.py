"""The example plugin package works as a real third-party distribution.

``examples/mfm-interpolant-power`` is built and installed by pip (offline: no index, no build
isolation, no dependencies) into a temporary target directory. Fresh interpreters with that
directory on ``PYTHONPATH`` then find it the way they find any pip-installed plugin: through the
entry-point metadata in its ``.dist-info``, not through the source tree.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "examples" / "mfm-interpolant-power"
DIST = "mfm-interpolant-power"

pytestmark = pytest.mark.slow


def _env(site: Path | None, **extra: str) -> dict[str, str]:
    """The caller's environment without mfm/pip/pytest switches, with ``site`` first on PYTHONPATH."""
    drop = ("MFM_", "PIP_", "PYTEST_ADDOPTS", "PYTEST_PLUGINS")
    env = {k: v for k, v in os.environ.items() if not k.startswith(drop)}
    if site is not None:
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(site), env.get("PYTHONPATH", "")) if p)
    env["PYTHONDONTWRITEBYTECODE"] = "1"  # leave no __pycache__ in the repository's example
    env.update(extra)
    return env


def _python(*args: str, cwd: Path, site: Path | None, **extra: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, *args], cwd=cwd, env=_env(site, **extra), capture_output=True, text=True, timeout=300
    )


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """``(site, workdir)``: the example pip-installed into ``site``; ``workdir`` is an empty folder.

    pip builds a local directory in place, so it builds a copy: the repository stays clean and
    concurrent runs do not share a build folder.
    """
    root = tmp_path_factory.mktemp("example-plugin")
    source, site, workdir = root / "source", root / "site", root / "work"
    shutil.copytree(EXAMPLE, source, ignore=shutil.ignore_patterns("build", "dist", "*.egg-info", "__pycache__"))
    workdir.mkdir()
    result = _python(
        "-m", "pip", "install", "--no-deps", "--no-build-isolation", "--no-index", "--no-cache-dir",
        "--disable-pip-version-check", "--quiet", "--target", str(site), str(source),
        cwd=root, site=None, PIP_CONFIG_FILE=os.devnull,
    )
    assert result.returncode == 0, f"pip install failed:\n{result.stdout}\n{result.stderr}"
    return site, workdir


def _mfm(installed: tuple[Path, Path], *args: str, **extra: str) -> subprocess.CompletedProcess:
    site, workdir = installed
    return _python("-m", "mfm_framework", *args, cwd=workdir, site=site, **extra)


def test_pip_installs_the_entry_point_metadata(installed):
    site, workdir = installed
    (info,) = site.glob("mfm_interpolant_power-*.dist-info")
    assert "[mfm]\nmfm-interpolant-power = mfm_interpolant_power" in (info / "entry_points.txt").read_text()
    code = "import mfm_interpolant_power as m; print(m.__file__)"
    result = _python("-c", code, cwd=workdir, site=site)
    assert result.returncode == 0, result.stderr
    assert Path(result.stdout.strip()).is_relative_to(site)  # the installed copy, not src/


def test_plugins_json_lists_the_plugin_and_its_distribution(installed):
    result = _mfm(installed, "plugins", "--json")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    (plugin,) = [p for p in data["plugins"] if p["name"] == DIST]
    assert plugin["distribution"] == DIST
    assert plugin["version"] == "0.1.0"
    assert plugin["module"] == "mfm_interpolant_power"
    assert plugin["status"] == "loaded" and plugin["errors"] == []
    assert plugin["components"] == {"interpolants": ["power"]}
    assert data["conflicts"] == []


def test_ls_interpolants_shows_power(installed):
    result = _mfm(installed, "ls", "interpolants")
    assert result.returncode == 0, result.stderr
    rows = [line.split() for line in result.stdout.splitlines()]
    assert ["interpolant", "power", DIST] in [row[:3] for row in rows]


def test_validate_accepts_power_three(installed):
    spec = EXAMPLE / "power.toml"
    assert 'kind = "power"\npower = 3.0' in spec.read_text()
    result = _mfm(installed, "validate", "--print", str(spec))
    assert result.returncode == 0, result.stderr
    assert f"{spec}: ok" in result.stdout
    assert '[model.interpolant]\nkind = "power"\npower = 3.0' in result.stdout


def test_validate_rejects_a_negative_power_with_its_key_path(installed):
    site, workdir = installed
    spec = workdir / "negative.toml"
    spec.write_text('[model.interpolant]\nkind = "power"\npower = -1.0\n')
    result = _mfm(installed, "validate", str(spec))
    assert result.returncode == 2, result.stdout + result.stderr
    assert f"{spec}: $.model.interpolant.power: must be >= 1: -1.0" in result.stderr
    assert "Traceback" not in result.stderr


def test_run_records_the_plugin_in_the_run_directory(installed):
    site, workdir = installed
    out = workdir / "run-power"
    result = _mfm(installed, "run", str(EXAMPLE / "power.toml"), "--out", str(out))
    assert result.returncode == 0, result.stderr
    assert 'kind = "power"\npower = 3.0' in (out / "resolved.toml").read_text()
    plugins = json.loads((out / "plugins.json").read_text())["plugins"]
    assert any(p["name"] == DIST and p["components"] == {"interpolants": ["power"]} for p in plugins)
    assert json.loads((out / "summary.json").read_text())["status"] == "complete"


def test_a_blocked_plugin_contributes_nothing(installed):
    result = _mfm(installed, "plugins", "--json", MFM_BLOCK_PLUGINS=DIST)
    assert result.returncode == 0, result.stderr
    (plugin,) = [p for p in json.loads(result.stdout)["plugins"] if p["name"] == DIST]
    assert plugin["status"] == "blocked"
    result = _mfm(installed, "validate", str(EXAMPLE / "power.toml"), MFM_BLOCK_PLUGINS=DIST)
    assert result.returncode == 2
    assert "$.model.interpolant.kind: unknown interpolant 'power'" in result.stderr


def test_the_example_tests_pass_against_the_installed_package(installed):
    site, workdir = installed
    result = _python("-m", "pytest", str(EXAMPLE / "tests"), "-q", "-p", "no:cacheprovider", cwd=workdir, site=site)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert re.search(r"\b\d+ passed\b", output), output
    for word in ("failed", "skipped", "error", "xfail"):
        assert word not in output.lower(), output


# ----------------------------------------------------------------------------- CONTRIBUTING.md
CONTRIBUTING = REPO / "CONTRIBUTING.md"
_BLOCK = re.compile(r"<!-- (verbatim|tested): (\S+) -->\n```\w*\n(.*?)```", re.S)


def _contributing_blocks(tag: str) -> list[tuple[str, str]]:
    """``(path, code)`` of the fenced blocks of CONTRIBUTING.md marked ``<!-- tag: path -->``."""
    return [(path, code) for found, path, code in _BLOCK.findall(CONTRIBUTING.read_text()) if found == tag]


def test_contributing_quotes_the_example_verbatim():
    blocks = _contributing_blocks("verbatim")
    assert len(blocks) >= 7
    for path, code in blocks:
        assert code in (REPO / path).read_text(), f"CONTRIBUTING.md quotes {path}, which no longer holds:\n{code}"


def test_contributing_lifecycle_plugin_works(tmp_path, monkeypatch, capsys):
    ((name, code),) = _contributing_blocks("tested")
    (tmp_path / name).write_text(code)
    module = Path(name).stem

    # In a run, loaded by MFM_PLUGINS as CONTRIBUTING.md shows.
    spec = tmp_path / "printer-demo.toml"
    spec.write_text('[run]\nname = "printer-demo"\n')
    result = _python(
        "-m", "mfm_framework", "run", str(spec), "--out", str(tmp_path / "run"),
        cwd=tmp_path, site=tmp_path, MFM_PLUGINS=module,
    )
    assert result.returncode == 0, result.stderr
    assert "printer-demo: complete after " in result.stderr

    # A training step, called the way the training engine calls the hook.
    from types import SimpleNamespace

    from mfm_framework.plugins import PluginSystem

    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        system = PluginSystem.load(autoload=False, modules=[module], blocked=(), trace=False)
        assert [p.status for p in system.plugins] == ["loaded"], system.plugins
        run = SimpleNamespace(spec=SimpleNamespace(run=SimpleNamespace(name="demo")))
        system.hook.mfm_train_step_end(run=run, step=3, metrics={"loss": 0.25, "lr": 1e-3})
        assert capsys.readouterr().err == "demo step 3: loss=0.25 lr=0.001\n"
    finally:
        sys.modules.pop(module, None)
