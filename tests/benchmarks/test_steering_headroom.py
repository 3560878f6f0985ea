"""The steering headroom benchmark runs end to end on a small budget and prints its table."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

from mfm_data import GaussianMixture
from mfm_rewards import GaussianLikelihoodReward

ROOT = Path(__file__).resolve().parents[2]


def load_benchmark():
    spec = importlib.util.spec_from_file_location("steering_headroom", ROOT / "benchmarks" / "steering_headroom.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_prints_the_efficiency_and_the_oracle_table(capsys: pytest.CaptureFixture[str]) -> None:
    bench = load_benchmark()
    rc = bench.main(["--set", "steer.samples=300", "--repeats", "2", "--steps", "1,5", "--draws", "1,8,32"])
    out = capsys.readouterr().out
    assert rc == 0
    # the paper's 2-D task: Z(r)^2 / Z(2r) in closed form, against a Monte Carlo estimate
    line = next(x for x in out.splitlines() if x.startswith("SIR effective sample size"))
    data, reward = GaussianMixture(), GaussianLikelihoodReward()
    w = reward(data.sample(400_000, generator=torch.Generator().manual_seed(5)).x_1.double()).exp()
    monte_carlo = float(w.mean() ** 2 / w.square().mean())
    assert "(closed form)" in line and abs(float(line.split("= ")[1].split()[0]) / monte_carlo - 1) < 0.03
    rows = [x.split() for x in out.splitlines() if x.strip().startswith(("euler", "heun"))]
    assert [(r[0], r[1]) for r in rows] == [("euler", "1"), ("euler", "5"), ("heun", "1"), ("heun", "5")]
    # priced as MFM-G with one draw: 5 NFE per steered evaluation, 1 at t = 1 (Heun's last corrector)
    assert [float(r[2]) for r in rows] == [5, 25, 6, 46]
    excess = {(r[0], r[1]): float(r[3]) for r in rows}
    assert excess[("heun", "5")] < excess[("euler", "1")]  # more steps of the exact dynamics get closer


def test_rejects_a_spec_without_steering(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    spec = tmp_path / "plain.toml"
    spec.write_text('[run]\nname = "x"\n[data]\nkind = "gmm"\n')
    assert load_benchmark().main([str(spec)]) == 2
    assert "needs [data] and [steer]" in capsys.readouterr().err
