"""The steer stage, checked where the answers are known.

1. On the exact meta flow map of Gaussian data (``mfm_framework.testing.exact``) with the paper's
   2-D likelihood reward: the tilted law is Gaussian and every posterior draw is exact, so the
   oracle lands at the noise floor, MFM-G close to it, its grad-V error falls like a Monte Carlo
   error with N, and the counted costs are the paper's formulas.
2. End to end (``[train]`` then ``[steer]``) on the paper's 2-D mixture with a small model trained
   inside the test: the run completes, every record is written, the oracle is at the floor and
   MFM-G is far better than not steering; steering the saved ``model.pt`` instead (``[train]``
   skipped) gives the same numbers.
"""

from __future__ import annotations

import json
import textwrap

import pytest
import tomli_w
import torch

from mfm_framework.engine.steer import _mixture, _mode_weights, _total_variation, format_steering, steer_stage
from mfm_framework.model import MetaFlowMap
from mfm_framework.plugins import PluginSystem
from mfm_framework.run import execute_run, prepare_run, stages_for, trains
from mfm_framework.spec import load_spec
from mfm_framework.testing.exact import GaussianFlowMapBackbone, GaussianFlowMapOptions

M, S = 0.5, 0.7

HEAD = """
[run]
name = "{name}"
seed = 5
dtype = "float64"

[data]
kind = "gmm"
{data}
"""

GAUSSIAN = f'preset = "custom"\nmeans = [[{M}, {M}]]\nstd = {S}'

STEER = {
    "samples": 600,
    "batch_size": 400,
    "plots": False,
    "rewards": [{"kind": "gaussian-likelihood"}],
    "methods": [
        {"estimator": {"kind": "mfm-g", "particles": 16}, "steps": [5, 20]},
        {"estimator": {"kind": "mfm-gf", "particles": 16}, "steps": [20]},
        {"estimator": {"kind": "dps"}, "steps": [20]},
        {"estimator": {"kind": "exact", "exact_drift": True}, "integrator": {"kind": "heun"}, "steps": [20]},
    ],
    "metrics": [{"kind": "sw2", "projections": 128}, {"kind": "energy"}],
    "diagnostics": {"reference": {"kind": "exact"}, "t_grid": [0.3, 0.7], "particles": [1, 4, 64], "contexts": 64},
}


@pytest.fixture(scope="module")
def system() -> PluginSystem:
    return PluginSystem.load(autoload=True, modules=(), blocked=(), trace=False)


TINY = """
[model.backbone]
kind = "mlp"
width = 16
depth = 1

[train]
steps = 1
"""


def context(tmp_path, system, *, name="st", data=GAUSSIAN, train=TINY, overrides=(), **steer):
    text = HEAD.format(name=name, data=data) + "\n" + train + "\n" + tomli_w.dumps({"steer": {**STEER, **steer}})
    path = tmp_path / f"{name}.toml"
    path.write_text(textwrap.dedent(text))
    loaded = load_spec(path, registry=system.registry, overrides=overrides)
    return prepare_run(loaded, plugins=system, run_dir=tmp_path / name)


def exact_gaussian_model(ctx) -> MetaFlowMap:
    outer, inner = ctx.spec.model.interpolant.build(), ctx.spec.model.inner_interpolant.build()
    backbone = GaussianFlowMapBackbone(GaussianFlowMapOptions(mean=M, std=S), data_shape=(2,)).bind(interpolant=outer, inner=inner)
    return MetaFlowMap(backbone, outer, inner).to(torch.float64)


def by_label(summary: dict) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for run in summary["runs"]:
        out.setdefault(run["label"], []).append(run)
    return out


@pytest.fixture(scope="module")
def exact_run(tmp_path_factory, system):
    ctx = context(tmp_path_factory.mktemp("exact"), system, plots=True)
    ctx.model = exact_gaussian_model(ctx)
    return ctx, steer_stage(ctx)


# ------------------------------------------------------------------ exact Gaussian meta flow map
def test_the_oracle_lands_at_the_noise_floor_and_mfm_g_close_to_it(exact_run):
    ctx, summary = exact_run
    runs = by_label(summary)
    floor = summary["floor"]["sw2"]
    exact = runs["exact"][0]
    assert exact["distances"]["sw2"] < 2.0 * floor
    # not steering at all is far off: the data law itself against the tilted law
    law = ctx.data.tilted(ctx.spec.steer.rewards[0].reward.build().closed_form())
    metric = ctx.spec.steer.metrics[0].build()
    gen = torch.Generator().manual_seed(0)
    unsteered = float(metric(samples=ctx.data.sample(600, generator=gen).x_1, reference=law.sample(600, generator=gen).x_1)) - floor
    mfm_g = {r["steps"]: r for r in runs["mfm-g"]}
    assert unsteered > 0.5
    assert mfm_g[20]["excess"] < 0.1 * unsteered
    assert mfm_g[20]["excess"] < mfm_g[5]["excess"] + 0.05  # more steps do not hurt
    # the reward is really optimised: close to the exact tilted law's mean reward
    assert abs(mfm_g[20]["mean_reward"] - summary["tilted"]["mean_reward"]) < 0.5
    assert abs(runs["dps"][0]["mean_reward"]) < 50  # finite and sane


def test_costs_are_counted_and_match_the_papers_formulas(exact_run):
    _, summary = exact_run
    runs = by_label(summary)
    start = 2  # start_steps of Euler from noise to t_min, 1 base forward each
    for run in runs["mfm-g"]:
        k, n = run["steps"], run["particles"]
        cost = run["cost"]
        assert cost["base_forwards"] == start + k and cost["mfm_forwards"] == n * k
        assert cost["reward_calls"] == n * k and cost["backwards"] == n * k
        assert cost["nfe"] == start + k + 4 * n * k and cost["wall_s"] > 0
    gf = runs["mfm-gf"][0]
    assert gf["cost"]["nfe"] == start + 20 + 2 * 16 * 20 and gf["cost"]["backwards"] == 0
    assert runs["dps"][0]["cost"]["nfe"] == start + 4 * 20
    # the oracle with the exact drift: only the start (Heun, 2 a step); exact at t = 1 too
    exact = runs["exact"][0]["cost"]
    assert exact["base_forwards"] == 2 * start and exact["nfe"] == 2 * start
    assert runs["exact"][0]["particles"] is None and runs["dps"][0]["particles"] is None


def test_diagnostics_fall_with_n_for_posterior_estimators_and_not_for_dps(exact_run):
    _, summary = exact_run
    diag = summary["diagnostics"]
    assert diag["reference"] == "exact" and set(diag["relative_error"]) == {"mfm-g", "mfm-gf", "dps"}
    err, cos = diag["relative_error"], diag["cosine"]
    assert err["mfm-g"]["1"] > 3 * err["mfm-g"]["64"]
    # exact posterior draws: consistent, though the sharp likelihood (sigma = 0.2) makes exp r
    # heavy-tailed, so 64 draws still leave an error of the order of the gradient itself (and
    # flip its sign where it is near 0); a point mass at the denoiser (DPS) is off by far more
    assert err["mfm-g"]["64"] < 3 and cos["mfm-g"]["64"] > 0.6 and err["dps"]["1"] > 5
    assert err["mfm-gf"]["1"] == pytest.approx(1.0) and cos["mfm-gf"]["1"] == 0.0  # N = 1: softmax weights are 1
    assert err["mfm-gf"]["64"] < 0.6 and cos["mfm-gf"]["64"] > 0.9
    assert len(set(err["dps"].values())) == 1 and diag["varies_with_particles"]["dps"] is False
    checks = summary["checks"]
    assert checks["headline_method"] == "mfm-g"
    assert checks["grad_error_drop"]["mfm-g"] > 3 and checks["grad_error_drop"]["dps"] == 1
    assert checks["reference_over_floor"]["exact"] < 2
    assert set(checks["excess_ratio_same_steps"]) == {"mfm-gf", "dps", "exact"}
    assert checks["excess_ratio_same_steps"]["dps"]["steps"] == 20
    match = checks["nfe_to_match"]
    assert match["target_nfe"] == 2 + 20 + 4 * 16 * 20 and match["methods"]["exact"]["reached"]


def test_records_table_and_plots(exact_run):
    ctx, summary = exact_run
    records = [json.loads(line) for line in ctx.metrics_path.read_text().splitlines()]
    methods = [r for r in records if r.get("stage") == "steer" and r.get("part") == "method"]
    assert [r["run"] for r in methods] == [r["run"] for r in summary["runs"]] and len(methods) == 5
    assert sum(r.get("part") == "diagnostics" for r in records) == 2 * (3 + 3 + 1)
    table = ctx.tables["steer"]
    assert table == format_steering(summary)
    for text in ("mfm-g", "floor (exact)", "sw2 excess", "mode TV", "err N=64", "grad V error of mfm-g"):
        assert text in table
    assert summary["plots"] == ["steer_distance_vs_nfe.png", "steer_grad_error_vs_n.png", "steer_samples.png"]
    for name in summary["plots"]:
        assert (ctx.run_dir / name).stat().st_size > 1000
    # a one-component law: the mode weights are trivially exact
    assert summary["tilted"]["mode_weights"] == [1.0]
    assert all(r["mode_tv"] == pytest.approx(0, abs=1e-9) for r in summary["runs"])
    json.dumps(summary)  # plain data


def test_mode_weight_error_uses_exact_responsibilities(system):
    from mfm_framework.kinds import kind_by_name

    gmm = system.registry.get(kind_by_name("data-source"), "gmm").cls
    means = torch.tensor([[-4.0, 0.0], [4.0, 0.0], [0.0, 5.0]], dtype=torch.float64)
    covs = torch.eye(2, dtype=torch.float64).expand(3, 2, 2) * 0.3
    law = gmm.from_parameters(means=means, covariances=covs, weights=torch.tensor([0.5, 0.3, 0.2]))
    wrong = gmm.from_parameters(means=means, covariances=covs, weights=torch.tensor([0.2, 0.3, 0.5]))
    mixture = _mixture(law)
    gen = torch.Generator().manual_seed(1)
    exact = _mode_weights(mixture, law.sample(20000, generator=gen).x_1)
    assert _total_variation(exact, mixture[2]) < 0.02
    off = _mode_weights(mixture, wrong.sample(20000, generator=gen).x_1)
    assert _total_variation(off, mixture[2]) == pytest.approx(0.3, abs=0.02)
    # a non-finite sample belongs to no mode
    x = law.sample(10, generator=gen).x_1
    x[0] = float("nan")
    assert float(_mode_weights(mixture, x).sum()) == pytest.approx(0.9)
    assert _mixture(object()) is None


def test_a_data_source_without_tilts_is_a_clear_error(tmp_path, system, monkeypatch):
    ctx = context(tmp_path, system)
    ctx.model = exact_gaussian_model(ctx)
    monkeypatch.setattr(ctx, "data", object())
    with pytest.raises(Exception, match="TiltableData"):
        steer_stage(ctx)


# ---------------------------------------------------------------- end to end: train, then steer
END_TO_END_TRAIN = """
[model.backbone]
kind = "mlp"
width = 64
depth = 2

[train]
steps = 300
batch_size = 256
warmup_steps = 50
log_every = 100
"""

END_TO_END = {
    "samples": 500,
    "plots": False,
    "methods": [  # as in examples/gmm2d_steer.toml
        {"estimator": {"kind": "mfm-g", "particles": 16}, "steps": [20], "t_min": 0.005, "g_max": 2.0},
        {"estimator": {"kind": "dps"}, "steps": [20], "t_min": 0.005, "g_max": 2.0},
        {"estimator": {"kind": "exact", "exact_drift": True}, "integrator": {"kind": "heun"}, "steps": [20], "t_min": 0.005},
        # exact grad V on the trained model's base drift
        {"label": "exact-on-model", "estimator": {"kind": "exact"}, "steps": [20], "t_min": 0.005},
        {"baseline": "sir", "sampler": "ode", "steps": [4], "draws": [4]},
        # Best-of-1 on the base ODE: the model's own samples, not steered at all
        {"baseline": "best-of-n", "label": "unsteered", "sampler": "ode", "steps": [20], "draws": [1]},
    ],
    "diagnostics": {"reference": {"kind": "exact"}, "t_grid": [0.5], "particles": [1, 16], "contexts": 32},
}


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory, system):
    tmp = tmp_path_factory.mktemp("e2e")
    ctx = context(tmp, system, name="trained", data='preset = "paper-2d"', train=END_TO_END_TRAIN, **END_TO_END)
    assert [name for name, _ in stages_for(ctx.spec)] == ["components", "train", "steer"]
    return tmp, ctx, execute_run(ctx)


def test_train_then_steer_end_to_end(trained_run):
    """A 300-step model is far from exact, so MFM-G is only checked to run and be counted here (its
    accuracy is checked on the exact Gaussian meta flow map above); steering by the exact grad V
    on the model's own base drift must beat not steering by far."""
    _, ctx, summary = trained_run
    assert summary["status"] == "complete" and summary["stages"]["train"]["steps"] == 300
    steer = summary["stages"]["steer"]
    runs = {label: rows[0] for label, rows in by_label(steer).items()}
    floor = steer["floor"]["sw2"]
    # the oracle integrates the exact tilted velocity: at the floor whatever the model
    assert runs["exact"]["distances"]["sw2"] < 2.0 * floor and runs["exact"]["mode_tv"] < 0.06
    unsteered, guided = runs["unsteered"], runs["exact-on-model"]
    assert unsteered["cost"]["nfe"] == 21 and unsteered["mean_reward"] < -10
    assert guided["mean_reward"] > unsteered["mean_reward"] + 10
    assert guided["distances"]["sw2"] < unsteered["distances"]["sw2"]
    mfm_g = runs["mfm-g"]
    assert mfm_g["cost"]["nfe"] == 2 + 20 + 4 * 16 * 20 and not mfm_g["notes"][1:]  # only "clamped"
    assert mfm_g["notes"] == ["clamped"] and mfm_g["flags"]["g_max"] == 2.0
    assert runs["sir"]["cost"]["nfe"] == 4 * (4 + 1) and runs["sir"]["flags"]["method"] == "sir"
    # three modes with tilted weights about 0.57, 0.37, 0.06
    weights = steer["tilted"]["mode_weights"]
    assert len(weights) == 3 and max(weights) < 0.7 and min(weights) > 0.02
    assert steer["checks"]["headline_method"] == "mfm-g" and "unsteered" in steer["checks"]["nfe_to_match"]["methods"]
    checks = steer["checks"]
    assert list(checks["nfe_to_match_by_budget"]) == ["mfm-g/K=20/N=16"]
    assert checks["nfe_to_match_by_budget"]["mfm-g/K=20/N=16"] == checks["nfe_to_match"]
    dps = checks["excess_ratio_same_steps"]["dps"]
    assert list(dps["ratio_by_steps"]) == ["20"] and dps["ratio_by_steps"]["20"] == dps["ratio"]
    assert (ctx.run_dir / "model.pt").is_file() and "steer" in ctx.tables


def test_steering_the_saved_model_skips_training_and_gives_the_same_numbers(trained_run, system):
    tmp, first, summary = trained_run
    model = str(first.run_dir / "model.pt")
    ctx = context(
        tmp, system, name="again", data='preset = "paper-2d"', train=END_TO_END_TRAIN,
        overrides=[f"steer.model={model}", "run.name=trained"], **END_TO_END,
    )
    assert ctx.spec.steer.model == model and not trains(ctx.spec)
    again = execute_run(ctx)
    assert "skipped" in again["stages"]["train"] and not (ctx.run_dir / "model.pt").exists()

    def numbers(s):
        return [{k: v for k, v in r.items() if k not in ("cost", "flags")} for r in s["stages"]["steer"]["runs"]]

    first_runs, again_runs = numbers(summary), numbers(again)
    assert [r["run"] for r in again_runs] == [r["run"] for r in first_runs]
    for a, b in zip(again_runs, first_runs):  # same seeds, same weights (an exploding DPS amplifies the last bits)
        assert a["distances"] == pytest.approx(b["distances"], rel=1e-4) and a["notes"] == b["notes"]
        assert a["mean_reward"] == pytest.approx(b["mean_reward"], rel=1e-4)
    assert again["stages"]["steer"]["diagnostics"]["relative_error"] == summary["stages"]["steer"]["diagnostics"]["relative_error"]
