"""A short CI variant of ``examples/gmm2d.toml``: the same spec with a smaller budget.

The full example (an MLP 256 x 4, 6000 steps of 512) is what the README runs; here an MLP 128 x 3,
3000 steps of 256 and smaller evaluation sets take about 20 s on a 2-core CPU, with bounds that a
broken objective, sampler or evaluation would fail: the one-step MFM posterior beats one GLASS
step by far and stays near 8 GLASS steps, and the one-step unconditional samples find the three
modes with their weights. (Measured at this budget: MFM-1 excess 0.28, GLASS-1 0.91, GLASS-8
0.20; kernel-1 at 4.0x the floor.)
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from mfm_framework.checkpoint import load_flow_map
from mfm_framework.cli import main
from mfm_framework.sampling import kernel_sample

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "examples" / "gmm2d.toml"
MEANS = torch.tensor([[-3.0, -3.0], [0.0, 0.0], [3.0, 3.0]])

pytestmark = pytest.mark.slow

SHORT = [
    "run.threads=1",
    "model.backbone.width=128",
    "model.backbone.depth=3",
    "train.steps=3000",
    "train.batch_size=256",
    "train.log_every=500",
    "train.checkpoint_every=0",
    "evaluate.contexts=2",
    "evaluate.samples=500",
    "evaluate.mfm_steps=[1, 4]",
    "evaluate.glass_steps=[1, 8]",
    "evaluate.unconditional_samples=2000",
    "evaluate.kernel_steps=[1]",
    "evaluate.ode_steps=[16]",
    'evaluate.metrics=[{kind = "sw2"}]',
    "evaluate.plots=false",
]


@pytest.fixture(scope="module")
def short_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("gmm2d") / "run"
    before = torch.get_num_threads()
    try:
        args = ["run", str(EXAMPLE), "--out", str(out)]
        for item in SHORT:
            args += ["--set", item]
        assert main(args) == 0
    finally:
        torch.set_num_threads(before)
    return out


def test_example_is_valid_as_shipped() -> None:
    assert main(["validate", str(EXAMPLE)]) == 0


def test_short_run_posterior_beats_glass(short_run: Path) -> None:
    summary = json.loads((short_run / "summary.json").read_text())
    assert summary["status"] == "complete"
    post = summary["stages"]["evaluate"]["posterior"]
    excess = post["excess_mean"]
    floor = post["mean"]["floor"]["sw2"]
    # one GLASS step is far off at small t; a working MFM is not
    assert excess["mfm-1"] < 0.5 * excess["glass-1"], excess
    assert excess["mfm-1"] < 2.0 * excess["glass-8"] + 0.5 * floor, excess
    assert excess["mfm-4"] < excess["glass-1"], excess


def test_short_run_unconditional_one_step(short_run: Path) -> None:
    summary = json.loads((short_run / "summary.json").read_text())
    unc = summary["stages"]["evaluate"]["unconditional"]
    assert unc["over_floor"]["kernel-1"] < 6.0, unc["over_floor"]
    model = load_flow_map(short_run / "model.pt")
    with torch.no_grad():
        x = kernel_sample(model, n=3000, steps=1, generator=torch.Generator().manual_seed(0))
    nearest = torch.cdist(x, MEANS).argmin(dim=1)
    weights = torch.bincount(nearest, minlength=3).double() / x.shape[0]
    assert torch.allclose(weights, torch.full((3,), 1 / 3, dtype=torch.float64), atol=0.08), weights
    for k in range(3):
        centre = x[nearest == k].median(dim=0).values
        assert torch.allclose(centre, MEANS[k], atol=0.5), (k, centre)
