"""Run directories: written before any work, never half-written, never clobbered."""

from __future__ import annotations

import json

import pytest

from mfm_framework import hookimpl
from mfm_framework.cli import main
from mfm_framework.errors import MfmUserError
from mfm_framework.run import format_summary, prepare_run
from mfm_framework.spec import load_spec

GOOD = '[run]\nname = "r1"\nseed = 4\n'


def test_resolved_spec_and_plugins_exist_before_any_work(use_system, write, tmp_path, capsys):
    seen = {}

    class Spy:
        @hookimpl
        def mfm_run_start(self, run):
            seen["files"] = sorted(p.name for p in run.run_dir.iterdir())
            seen["summary_before"] = (run.run_dir / "summary.json").exists()

        @hookimpl
        def mfm_run_end(self, run, status, summary):
            seen["status"] = status

    use_system.register(Spy(), name="spy")
    out = tmp_path / "out"
    assert main(["run", str(write("s.toml", GOOD)), "--out", str(out)]) == 0
    assert seen == {"files": ["plugins.json", "resolved.toml"], "summary_before": False, "status": "complete"}
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "complete" and summary["run"] == "r1"
    assert summary["stages"]["components"]["model.interpolant"] == "linear"
    assert "run r1: complete" in capsys.readouterr().out
    plugins = json.loads((out / "plugins.json").read_text())
    assert any(p["name"] == "spy" for p in plugins["plugins"])


def test_the_resolved_spec_runs_again(use_system, write, tmp_path):
    first = tmp_path / "first"
    assert main(["run", str(write("s.toml", GOOD)), "--out", str(first), "--set", "run.seed=9"]) == 0
    second = tmp_path / "second"
    assert main(["run", str(first / "resolved.toml"), "--out", str(second)]) == 0
    assert (first / "resolved.toml").read_text().split("\n", 1)[1] == (second / "resolved.toml").read_text().split("\n", 1)[1]
    assert "seed = 9" in (second / "resolved.toml").read_text()


def test_an_existing_run_directory_is_never_touched(use_system, write, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "model.pt").write_text("precious")
    assert main(["run", str(write("s.toml", GOOD)), "--out", str(out)]) == 2
    assert "already exists" in capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == ["model.pt"]
    assert (out / "model.pt").read_text() == "precious"


def test_default_run_directory_and_rerun_message(use_system, write, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    spec = write("s.toml", GOOD)
    assert main(["run", str(spec)]) == 0
    assert (tmp_path / "runs" / "r1" / "summary.json").exists()
    assert main(["run", str(spec)]) == 2
    assert "status: complete" in capsys.readouterr().err


def test_an_unavailable_device_is_a_user_error_and_writes_nothing(system, write, tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    loaded = load_spec(write("s.toml", GOOD), registry=system.registry, overrides=["run.device=cuda"])
    with pytest.raises(MfmUserError, match="CUDA is not available"):
        prepare_run(loaded, plugins=system, run_dir=tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_format_summary_rows():
    text = format_summary({"run": "x", "status": "complete", "elapsed_s": 1.5, "stages": {"eval": {"sw2": 0.123456789, "n": 3}}})
    assert text.splitlines() == ["run x: complete in 1.50 s", "  eval.sw2  0.123457", "  eval.n    3"]


def test_run_threads_sets_torch_intra_op_threads(use_system, write, tmp_path):
    import torch

    before = torch.get_num_threads()
    seen = {}

    class Spy:
        @hookimpl
        def mfm_run_start(self, run):
            seen["threads"] = torch.get_num_threads()

    use_system.register(Spy(), name="threads-spy")
    try:
        want = 2 if before == 1 else 1
        spec = write("t.toml", f'[run]\nname = "t"\nthreads = {want}\n')
        assert main(["run", str(spec), "--out", str(tmp_path / "t")]) == 0
        assert seen["threads"] == want
    finally:
        torch.set_num_threads(before)
