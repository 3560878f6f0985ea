"""The training engine: determinism, bit-identical resume, checkpoints, model files."""

from __future__ import annotations

import json
import textwrap

import pytest
import torch

import mfm_framework.plugins as plugins_module
from mfm_framework import hookimpl
from mfm_framework.checkpoint import load_flow_map, load_payload
from mfm_framework.cli import main
from mfm_framework.engine.train import lr_factor, sample_context_times
from mfm_framework.errors import MfmUserError
from mfm_framework.plugins import PluginSystem

SPEC = """
[run]
name = "tiny"
seed = 11

[model.backbone]
kind = "mlp"
width = 32
depth = 2

[data]
kind = "gmm"

[train]
steps = 24
batch_size = 64
warmup_steps = 4
log_every = 5
checkpoint_every = 8
keep_checkpoints = 2

[train.loss]
kind = "{loss}"
"""


@pytest.fixture
def fresh_system(monkeypatch):
    system = PluginSystem.load(autoload=True, modules=(), blocked=(), trace=False)
    monkeypatch.setattr(plugins_module, "_DEFAULT", system)
    return system


def write_spec(tmp_path, loss="eulerian", extra=""):
    path = tmp_path / f"{loss}.toml"
    path.write_text(textwrap.dedent(SPEC.format(loss=loss)) + textwrap.dedent(extra))
    return path


def weights(path):
    return load_payload(path, expected_format="mfm-model")["state_dict"]


def test_training_writes_metrics_checkpoints_and_a_model_file(fresh_system, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["run", str(write_spec(tmp_path)), "--out", str(out)]) == 0
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [5, 10, 15, 20, 24]
    assert all({"loss", "lr", "grad_norm", "diagonal", "consistency"} <= set(r) for r in records)
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step-0000016.pt", "step-0000024.pt"]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "complete" and summary["stages"]["train"]["steps"] == 24
    model = load_flow_map(out / "model.pt")
    assert model.backbone.options.width == 32 and not any(p.requires_grad for p in model.parameters())
    sample = model.sample_posterior(t=0.5, x=torch.zeros(3, 2), n=4)
    assert sample.shape == (3, 4, 2) and torch.isfinite(sample).all()


@pytest.mark.parametrize("loss", ["eulerian", "semigroup"])
def test_training_is_deterministic_and_resumes_bit_identically(fresh_system, tmp_path, loss):
    spec = write_spec(tmp_path, loss)
    assert main(["run", str(spec), "--out", str(tmp_path / "a")]) == 0
    assert main(["run", str(spec), "--out", str(tmp_path / "b")]) == 0
    a, b = weights(tmp_path / "a" / "model.pt"), weights(tmp_path / "b" / "model.pt")
    assert all(torch.equal(a[k], b[k]) for k in a)

    class Interrupt:
        @hookimpl
        def mfm_train_step_end(self, run, step, metrics):
            if step == 13:
                raise KeyboardInterrupt

    fresh_system.register(Interrupt(), name="interrupt")
    assert main(["run", str(spec), "--out", str(tmp_path / "c")]) == 130
    assert (tmp_path / "c" / "checkpoints" / "step-0000013.pt").exists()
    assert not (tmp_path / "c" / "model.pt").exists()
    fresh_system.pm.unregister(name="interrupt")
    assert main(["run", str(spec), "--out", str(tmp_path / "c"), "--resume"]) == 0
    c = weights(tmp_path / "c" / "model.pt")
    assert all(torch.equal(a[k], c[k]) for k in a)
    # a different seed gives different weights (the comparison above can fail)
    assert main(["run", str(spec), "--out", str(tmp_path / "d"), "--set", "run.seed=12"]) == 0
    d = weights(tmp_path / "d" / "model.pt")
    assert not all(torch.equal(a[k], d[k]) for k in a)


def test_resume_refuses_another_spec_and_a_missing_run(fresh_system, tmp_path, capsys):
    spec = write_spec(tmp_path)
    assert main(["run", str(spec), "--out", str(tmp_path / "r"), "--resume"]) == 2
    assert "nothing to resume" in capsys.readouterr().err
    assert main(["run", str(spec), "--out", str(tmp_path / "r")]) == 0
    assert main(["run", str(spec), "--out", str(tmp_path / "r"), "--resume", "--set", "train.lr=0.5"]) == 2
    assert "$.train.lr" in capsys.readouterr().err
    assert main(["run", str(spec), "--out", str(tmp_path / "r"), "--resume"]) == 0
    assert "already complete" in capsys.readouterr().err


def test_a_corrupt_checkpoint_is_a_clear_error_and_is_kept(fresh_system, tmp_path, capsys):
    spec = write_spec(tmp_path)
    out = tmp_path / "r"

    class Interrupt:
        @hookimpl
        def mfm_train_step_end(self, run, step, metrics):
            if step == 9:
                raise KeyboardInterrupt

    fresh_system.register(Interrupt(), name="interrupt")
    assert main(["run", str(spec), "--out", str(out)]) == 130
    fresh_system.pm.unregister(name="interrupt")
    ckpt = out / "checkpoints" / "step-0000009.pt"
    ckpt.write_bytes(b"not a checkpoint")
    assert main(["run", str(spec), "--out", str(out), "--resume"]) == 2
    err = capsys.readouterr().err
    assert "step-0000009.pt is corrupt" in err and "Traceback" not in err
    assert ckpt.read_bytes() == b"not a checkpoint"


def test_teacher_from_a_trained_checkpoint(fresh_system, tmp_path):
    assert main(["run", str(write_spec(tmp_path)), "--out", str(tmp_path / "base")]) == 0
    extra = f"""
    [train.target]
    kind = "teacher"
    source = "checkpoint"
    checkpoint = "{tmp_path / 'base' / 'model.pt'}"
    """
    assert main(["run", str(write_spec(tmp_path, "lagrangian", extra)), "--out", str(tmp_path / "student")]) == 0
    assert (tmp_path / "student" / "model.pt").exists()


def test_load_flow_map_errors(tmp_path):
    with pytest.raises(MfmUserError, match="does not exist"):
        load_flow_map(tmp_path / "missing.pt")
    bad = tmp_path / "bad.pt"
    torch.save({"format": "something-else"}, bad)
    with pytest.raises(MfmUserError, match="is not an mfm-model file"):
        load_flow_map(bad)


def test_context_times_have_an_atom_at_zero():
    gen = torch.Generator().manual_seed(0)
    t = sample_context_times(100_000, q0=0.1, gamma=2.0, generator=gen, like=torch.zeros(1, dtype=torch.float64))
    assert abs((t == 0).double().mean().item() - 0.1) < 0.005
    positive = t[t > 0]
    # U^2 has mean 1/3
    assert abs(positive.mean().item() - 1 / 3) < 0.005


def test_learning_rate_schedule():
    class Cfg:
        warmup_steps, steps, schedule = 10, 110, "cosine"

    assert lr_factor(0, Cfg) == pytest.approx(0.1)
    assert lr_factor(9, Cfg) == pytest.approx(1.0)
    assert lr_factor(60, Cfg) == pytest.approx(0.5)
    assert lr_factor(110, Cfg) == pytest.approx(0.0)
    Cfg.schedule = "constant"
    assert lr_factor(100, Cfg) == 1.0
