"""The evaluate stage, checked on an exact meta flow map of Gaussian data (known answers).

The data law is a one-component mixture ``N(m, s^2 I)`` (the ``gmm`` source, ``preset =
"custom"``), so the exact posterior is Gaussian and the exact meta flow map is affine. The
backbone below returns its exact average velocity (optionally scaled, to make a wrong model):
the exact model's posterior distance must sit at the noise floor and the wrong one's far above.
"""

from __future__ import annotations

import json
import math
import textwrap
from collections.abc import Iterator

import attrs
import pytest
import tomli_w
import torch
from torch import Tensor

from mfm_framework import hookimpl
from mfm_framework.checkpoint import save_flow_map
from mfm_framework.engine.build import build_model
from mfm_framework.engine.evaluate import POSTERIOR_SKIPPED, evaluate_stage, format_evaluation
from mfm_framework.interfaces import Backbone, DataBatch, DataSource, ExactData, SamplableData
from mfm_framework.model import MetaFlowMap
from mfm_framework.plugins import PluginSystem
from mfm_framework.run import prepare_run
from mfm_framework.spec import load_spec

M, S, DIM = 0.5, 0.7, 2

SPEC = """
[run]
name = "ev"
seed = 3

[model.backbone]
kind = "mlp"
width = 16
depth = 1

[data]
kind = "{data}"
{data_options}

{train}

{evaluate}

[[evaluate.metrics]]
kind = "sw2"
projections = 64

[[evaluate.metrics]]
kind = "energy"

[[evaluate.metrics]]
kind = "mmd"
"""

EVALUATE = {
    "t_grid": [0.3, 0.7],
    "contexts": 2,
    "samples": 400,
    "mfm_steps": [1, 2],
    "glass_steps": [1, 8],
    "unconditional_samples": 600,
    "kernel_steps": [1, 2],
    "ode_steps": [4],
    "plots": False,
    "plot_contexts": 2,
}

GAUSSIAN = f'preset = "custom"\nmeans = [[{", ".join([str(M)] * DIM)}]]\nstd = {S}'


# ------------------------------------------------------------------- the exact Gaussian flow map
class ExactGaussianBackbone(Backbone):
    """The exact average velocity of the meta flow map of ``N(M, S^2 I)`` data, times ``scale``.

    Linear outer and inner interpolants. Given the context ``(t, x)`` the posterior is
    ``N(mu, c^2 I)``; along ``y_r = (1 - r) eps + r x_1`` its law is ``N(r mu, sigma_r^2 I)`` with
    ``sigma_r^2 = (1 - r)^2 + r^2 c^2``, so the flow map is ``X_{s,u}(y) = u mu + sigma_u /
    sigma_s (y - s mu)`` and ``v_{s,u} = (X_{s,u}(y) - y) / (u - s)``; on the diagonal
    ``v_{s,s} = mu + (sigma_s' / sigma_s) (y - s mu)``.
    """

    name = "exact-gaussian-test"

    def __init__(self, *, scale: float = 1.0) -> None:
        super().__init__(None, data_shape=(DIM,), num_classes=None)
        self.dummy = torch.nn.Parameter(torch.zeros(()))
        self.scale = scale

    @staticmethod
    def posterior(t: Tensor, x: Tensor) -> tuple[Tensor, Tensor]:
        a2, b = (1 - t)[:, None] ** 2, t[:, None]
        den = a2 + b**2 * S**2
        return (a2 * M + b * S**2 * x) / den, S**2 * a2 / den

    def forward(self, *, y: Tensor, s: Tensor, u: Tensor, t: Tensor, x: Tensor, cond: Tensor | None = None) -> Tensor:
        mu, c2 = self.posterior(t, x)
        s_, u_ = s[:, None], u[:, None]

        def sigma(r: Tensor) -> Tensor:
            return ((1 - r) ** 2 + r**2 * c2).sqrt()

        h = u_ - s_
        diagonal = h.abs() < 1e-6
        h_safe = torch.where(diagonal, torch.ones_like(h), h)
        off = (u_ * mu + sigma(u_) / sigma(s_) * (y - s_ * mu) - y) / h_safe
        dsigma = (-(1 - s_) + s_ * c2) / sigma(s_)
        on = mu + dsigma / sigma(s_) * (y - s_ * mu)
        return self.scale * torch.where(diagonal, on, off)


# ------------------------------------------------------------------------ a data source w/o exact posterior
@attrs.frozen(kw_only=True)
class SamplesOnlyOptions:
    dim: int = 3


class SamplesOnly(DataSource):
    """``N(M, S^2 I)`` that can only draw samples (no closed-form posterior)."""

    name = "samples-only-test"
    Options = SamplesOnlyOptions

    @property
    def data_shape(self) -> tuple[int, ...]:
        return (self.options.dim,)

    def sample(self, n: int, *, generator: torch.Generator | None = None) -> DataBatch:
        return DataBatch(x_1=M + S * torch.randn(n, self.options.dim, generator=generator))

    def batches(self, *, batch_size: int, generator: torch.Generator, rank: int = 0, world_size: int = 1) -> Iterator[DataBatch]:
        while True:
            yield self.sample(batch_size, generator=generator)


class EvaluatePlugin:
    def __init__(self) -> None:
        self.results: list[tuple[str, dict]] = []

    @hookimpl
    def mfm_data_sources(self):
        return [SamplesOnly]

    @hookimpl
    def mfm_evaluation_results(self, run, stage, results):
        self.results.append((stage, results))


# ---------------------------------------------------------------------------------------- helpers
@pytest.fixture(scope="module")
def system() -> tuple[PluginSystem, EvaluatePlugin]:
    fresh = PluginSystem.load(autoload=True, modules=(), blocked=(), trace=False)
    plugin = EvaluatePlugin()
    fresh.register(plugin, name="evaluate-test")
    return fresh, plugin


def make_context(tmp_path, system, *, name="ev", data="gmm", data_options=GAUSSIAN, train=True, **evaluate):
    table = tomli_w.dumps({"evaluate": {**EVALUATE, **evaluate}})
    text = SPEC.format(data=data, data_options=data_options, train="[train]\nsteps = 1" if train else "", evaluate=table)
    path = tmp_path / f"{name}.toml"
    path.write_text(textwrap.dedent(text))
    loaded = load_spec(path, registry=system[0].registry)
    return prepare_run(loaded, plugins=system[0], run_dir=tmp_path / name)


def exact_model(ctx, scale: float = 1.0) -> MetaFlowMap:
    return MetaFlowMap(ExactGaussianBackbone(scale=scale), ctx.spec.model.interpolant.build(), ctx.spec.model.inner_interpolant.build())


def run_evaluate(tmp_path, system, *, scale=1.0, **kwargs):
    ctx = make_context(tmp_path, system, **kwargs)
    ctx.model = exact_model(ctx, scale)
    return ctx, evaluate_stage(ctx)


def numbers(summary: dict) -> dict:
    return {k: v for k, v in summary.items() if k not in ("seconds", "plots")}


@pytest.fixture(scope="module")
def exact_run(tmp_path_factory, system):
    return run_evaluate(tmp_path_factory.mktemp("exact"), system, plots=True)


# ------------------------------------------------------------------------------------------ tests
def test_the_exact_backbone_is_the_exact_posterior():
    """Self-check of the test's closed form: one-step draws have the exact posterior moments."""
    model = exact_model_standalone()
    t = torch.tensor([0.2, 0.8])
    x = torch.tensor([[1.0, -0.5], [0.3, 0.9]])
    draws = model.sample_posterior(t=t, x=x, n=40000, generator=torch.Generator().manual_seed(0))
    mu, c2 = ExactGaussianBackbone.posterior(t, x)
    assert torch.allclose(draws.mean(1), mu, atol=0.02)
    assert torch.allclose(draws.var(1), c2.expand(2, DIM), rtol=0.05)
    two = model.sample_posterior(t=t, x=x, n=40000, steps=2, generator=torch.Generator().manual_seed(0))
    one = model.sample_posterior(t=t, x=x, n=40000, steps=1, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(one, two, atol=1e-4)  # the semigroup property of an exact flow map


def exact_model_standalone() -> MetaFlowMap:
    from mfm_framework.plugins import default_plugin_system
    from mfm_framework.kinds import kind_by_name

    linear = default_plugin_system().registry.get(kind_by_name("interpolant"), "linear").cls()
    return MetaFlowMap(ExactGaussianBackbone(), linear, linear)


def test_an_exact_model_sits_at_the_noise_floor_and_a_wrong_one_does_not(exact_run, tmp_path, system):
    _, summary = exact_run
    post = summary["posterior"]
    floor = post["mean"]["floor"]["sw2"]
    assert floor > 0
    for method in ("mfm-1", "mfm-2"):
        assert abs(post["excess_mean"][method]) < 0.5 * floor, post["excess_mean"]
    # GLASS on the exact base drift converges with S; one Euler step is a point mass at the mean
    assert post["excess_mean"]["glass-1"] > 5 * floor
    assert post["excess_mean"]["glass-8"] < 0.25 * post["excess_mean"]["glass-1"]
    assert post["nfe"] == {"mfm-1": 1, "mfm-2": 2, "glass-1": 1, "glass-8": 8, "floor": 0}

    _, wrong = run_evaluate(tmp_path, system, scale=1.5, name="wrong")
    wrong_post = wrong["posterior"]
    assert wrong_post["mean"]["floor"] == post["mean"]["floor"]  # same exact draws, same metric randomness
    assert wrong_post["excess_mean"]["mfm-1"] > 3 * floor
    assert wrong_post["excess_mean"]["glass-8"] > post["excess_mean"]["glass-8"]
    assert wrong["unconditional"]["over_floor"]["kernel-1"] > 2.5
    # the unconditional part: the exact model's samplers are at the floor too
    unc = summary["unconditional"]
    assert unc["distances"]["floor"]["sw2"] > 0 and unc["over_floor"]["floor"] == 1.0
    for method in ("kernel-1", "kernel-2", "ode-4"):
        assert unc["over_floor"][method] < 2.0, unc["over_floor"]
    assert summary["checks"]["kernel1_over_floor"] == unc["over_floor"]["kernel-1"]
    assert "mfm1_vs_glass8_excess" in summary["checks"]
    assert summary["checks"]["mfm1_vs_glass8_excess"] == [post["excess_mean"]["mfm-1"], post["excess_mean"]["glass-8"]]


def test_summary_structure_table_log_and_hook(exact_run, system):
    ctx, summary = exact_run
    assert summary["headline_metric"] == "sw2"
    post = summary["posterior"]
    assert post["t_grid"] == [0.3, 0.7] and list(post["by_t"]) == ["0.3", "0.7"]
    methods = ["mfm-1", "mfm-2", "glass-1", "glass-8", "floor"]
    for row in post["by_t"].values():
        assert list(row) == methods
        assert all(list(v) == ["sw2", "energy", "mmd"] for v in row.values())
    assert list(post["excess_mean"]) == methods[:-1]
    mean_sw2 = (post["by_t"]["0.3"]["mfm-1"]["sw2"] + post["by_t"]["0.7"]["mfm-1"]["sw2"]) / 2
    assert math.isclose(post["mean"]["mfm-1"]["sw2"], mean_sw2, rel_tol=1e-5)
    for value in [v for row in post["mean"].values() for v in row.values()]:
        assert type(value) is float and value == float(f"{value:.6g}")
    assert list(summary["unconditional"]["distances"]) == ["floor", "kernel-1", "kernel-2", "ode-4"]
    assert summary["unconditional"]["nfe"]["ode-4"] == 8  # heun, the default ODE integrator
    json.dumps(summary, allow_nan=False)  # plain JSON numbers

    table = ctx.tables["evaluate"]
    assert table == format_evaluation(summary)
    for word in ("mfm-1", "glass-8", "floor", "t=0.3", "t=0.7", "kernel-2", "ode-4", "sw2/floor", "energy"):
        assert word in table
    print(table)

    records = [json.loads(line) for line in ctx.metrics_path.read_text().splitlines()]
    rows = [r for r in records if r.get("part") == "posterior"]
    assert len(rows) == 2 * len(methods) and all(r["stage"] == "evaluate" for r in rows)
    assert len(rows[0]["per_context"]["sw2"]) == 2
    contexts = [r for r in records if r.get("part") == "posterior-contexts"]
    assert len(contexts) == 2 and len(contexts[0]["x_1"]) == 2
    assert len([r for r in records if r.get("part") == "unconditional"]) == 4
    assert any(stage == "evaluate" and results is summary for stage, results in system[1].results)


def test_glass_with_a_second_order_integrator_converges_and_counts_its_nfe(tmp_path, system):
    _, summary = run_evaluate(tmp_path, system, glass_integrator={"kind": "heun"}, glass_steps=[1, 4], mfm_steps=[1])
    post = summary["posterior"]
    assert post["glass_integrator"] == "heun"
    assert post["nfe"] == {"mfm-1": 1, "glass-1": 2, "glass-4": 8, "floor": 0}
    # Heun evaluates the drift at s = 1; it must be its limit there, not 0 (sampling.glass_drift)
    assert abs(post["excess_mean"]["glass-4"]) < 0.5 * post["mean"]["floor"]["sw2"], post["excess_mean"]


def test_plots_are_written(exact_run):
    ctx, summary = exact_run
    assert summary["plots"] == ["posterior.png", "distance_vs_nfe.png", "unconditional.png"]
    for name in summary["plots"]:
        data = (ctx.run_dir / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000


def test_evaluation_is_deterministic_and_independent_of_plots(exact_run, tmp_path, system):
    _, first = exact_run
    _, again = run_evaluate(tmp_path, system, name="again", plots=False)
    assert numbers(again) == numbers(first)
    assert again["plots"] == [] and not list((tmp_path / "again").glob("*.png"))


def test_a_data_source_without_exact_posterior_skips_the_posterior(tmp_path, system):
    ctx = make_context(tmp_path, system, data="samples-only-test", data_options="dim = 3", plots=True)
    assert isinstance(ctx.data, SamplableData) and not isinstance(ctx.data, ExactData)
    ctx.model = build_model(ctx.spec.model, data_shape=(3,), num_classes=None)
    summary = evaluate_stage(ctx)
    assert summary["posterior"] == POSTERIOR_SKIPPED
    assert set(summary["unconditional"]["distances"]) == {"floor", "kernel-1", "kernel-2", "ode-4"}
    assert "mfm1_vs_glass8_excess" not in summary["checks"] and "kernel1_over_floor" in summary["checks"]
    assert summary["plots"] == ["unconditional.png"]
    assert POSTERIOR_SKIPPED in ctx.tables["evaluate"]


def test_a_model_file_is_loaded_when_there_is_no_trained_model(tmp_path, system):
    source = make_context(tmp_path, system, name="source")
    model = build_model(source.spec.model, data_shape=(DIM,), num_classes=None)
    save_flow_map(tmp_path / "model.pt", model=model, model_table=source.resolved["model"], step=0)
    ctx = make_context(
        tmp_path, system, name="from-file", train=False, model=str(tmp_path / "model.pt"),
        t_grid=[0.5], mfm_steps=[1], glass_steps=[2], samples=200, unconditional_samples=200, kernel_steps=[2],
    )
    assert ctx.model is None and ctx.spec.train is None
    summary = evaluate_stage(ctx)
    assert ctx.model is not None and not ctx.model.training
    assert list(summary["posterior"]["nfe"]) == ["mfm-1", "glass-2", "floor"]
    assert summary["checks"] == {}
    assert all(math.isfinite(v) for v in summary["posterior"]["excess_mean"].values())


@pytest.mark.parametrize("dim", [1, 3])
def test_plots_render_for_other_dimensions(tmp_path, system, dim):
    means = ", ".join(["0.5"] * dim)
    ctx = make_context(
        tmp_path, system, data_options=f'preset = "custom"\nmeans = [[{means}], [-{means}]]\nstd = 0.5', plots=True,
        t_grid=[0.5], contexts=2, samples=64, mfm_steps=[1], glass_steps=[2], unconditional_samples=64,
        kernel_steps=[1], ode_steps=[2],
    )
    ctx.model = build_model(ctx.spec.model, data_shape=(dim,), num_classes=None)
    summary = evaluate_stage(ctx)
    assert summary["plots"] == ["posterior.png", "distance_vs_nfe.png", "unconditional.png"]
    assert all((ctx.run_dir / name).stat().st_size > 5000 for name in summary["plots"])


def test_mfm_run_trains_then_evaluates_and_prints_the_table(tmp_path, system, monkeypatch, capsys):
    import mfm_framework.plugins as plugins_module
    from mfm_framework.cli import main

    monkeypatch.setattr(plugins_module, "_DEFAULT", system[0])
    text = SPEC.format(
        data="gmm",
        data_options=GAUSSIAN,
        train="[train]\nsteps = 5\nbatch_size = 32\nwarmup_steps = 1\nlog_every = 5",
        evaluate=tomli_w.dumps({"evaluate": {**EVALUATE, "samples": 64, "unconditional_samples": 64}}),
    )
    spec = tmp_path / "e2e.toml"
    spec.write_text(textwrap.dedent(text))
    assert main(["run", str(spec), "--out", str(tmp_path / "e2e")]) == 0
    summary = json.loads((tmp_path / "e2e" / "summary.json").read_text())
    assert summary["status"] == "complete"
    evaluation = summary["stages"]["evaluate"]
    assert list(evaluation["posterior"]["nfe"]) == ["mfm-1", "mfm-2", "glass-1", "glass-8", "floor"]
    out = capsys.readouterr().out
    assert "evaluate: posterior sw2" in out and "evaluate: unconditional" in out
    assert "evaluate.posterior.by_t" not in out  # the table replaces the raw numbers
