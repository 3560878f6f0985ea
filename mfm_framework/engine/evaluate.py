"""The evaluate stage: distances of posterior and unconditional samples to the exact law.

Generic over the data source, the metrics and the integrators: every component comes from the
``[evaluate]`` section of the spec, and the two parts run only when the data source has the
capability they need (MATH.md sections 2, 3, 5 and 8).

**Posterior part** (the data source is :class:`~mfm_framework.interfaces.ExactData`). For each
context time ``t`` of ``t_grid``, ``contexts`` contexts ``x = alpha_t z + beta_t x_1`` with
``x_1 ~ p_1``, ``z ~ N(0, I)`` (``x = 0`` at ``t = 0``, as in training). For each context,
``samples`` draws of

- ``mfm-K``: the MFM posterior sampler with K inner steps (K NFE per draw);
- ``glass-S``: the GLASS baseline with S steps of ``glass_integrator`` on the model's own base
  drift (the ``t = 0`` slice; NFE counted: S for Euler, about 2 S for Heun);
- ``floor``: a second, independent set of exact posterior draws (0 NFE): the noise floor;

are compared by every metric with one set of exact posterior draws of the same size. Values are
averaged over the contexts of each ``t``, then over ``t``; the *excess* of a method is its
headline metric minus the floor's. Within one context every method is compared with the same
reference and the same metric randomness (e.g. the same projections of a sliced distance), so
the differences between methods carry less noise than the values themselves.

**Unconditional part** (the data source is :class:`~mfm_framework.interfaces.SamplableData`).
``unconditional_samples`` draws of the K-step kernel sampler (``kernel-K``) and of the ODE on the
base drift with ``ode_integrator`` over a uniform grid of S steps (``ode-S``), and an
independent exact set (``floor``), each compared with one exact reference set of the same size.
The headline metric of each sampler is also given as a ratio to the floor's.

Class labels are not used: the exact posterior is that of ``x_1`` given ``x_t = x`` alone, so
every sampler runs with ``cond = None`` (the "no label" condition of a labelled model).

Random streams (offsets of ``run.seed``, see :meth:`RunContext.generator`) are fixed and
separate from training's, so the numbers are deterministic given the seed and the model, and one
part (or one method) does not shift the draws of another. Data-side draws use CPU generators,
model-side draws a generator on the model's device.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

from mfm_framework.grids import uniform_grid
from mfm_framework.interfaces import ExactData, SamplableData
from mfm_framework.sampling import glass_posterior, kernel_sample, ode_sample

__all__ = [
    "evaluate_stage",
    "format_evaluation",
    "EVAL_STREAM",
    "POSTERIOR_SKIPPED",
    "UNCONDITIONAL_SKIPPED",
]

#: Offset of ``run.seed`` of the evaluation's random streams (training uses 1 to 3).
EVAL_STREAM = 10
_CONTEXTS, _REFERENCE, _MODEL, _UNCOND_DATA, _UNCOND_MODEL, _METRIC = range(EVAL_STREAM, EVAL_STREAM + 6)

POSTERIOR_SKIPPED = "skipped: the data source has no exact posterior"
UNCONDITIONAL_SKIPPED = "skipped: the data source cannot draw exact samples"
FLOOR = "floor"
_CONTOUR_POINTS = 120  # per axis of the exact-density grid of the posterior plot


# ------------------------------------------------------------------------------------ helpers
def _num(value: float | Tensor) -> float:
    """A plain float rounded to 6 significant digits (non-finite values kept as they are)."""
    value = float(value)
    return float(f"{value:.6g}") if math.isfinite(value) else value


def _ratio(num: float, den: float) -> float | None:
    """``num / den`` rounded, or None where the floor is not positive (the ratio means nothing)."""
    if not (math.isfinite(num) and math.isfinite(den)) or den <= 0:
        return None
    return _num(num / den)


def _t_key(t: float) -> str:
    return f"{t:g}"


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else float("nan")


def _metrics(cfg: Any) -> list[tuple[str, Any]]:
    """``(key, metric)`` for every ``[[evaluate.metrics]]`` table; keys are the metric names,
    suffixed ``-2``, ``-3``... when a metric is listed more than once."""
    out: list[tuple[str, Any]] = []
    seen: dict[str, int] = {}
    for spec in cfg.metrics:
        seen[spec.name] = seen.get(spec.name, 0) + 1
        key = spec.name if seen[spec.name] == 1 else f"{spec.name}-{seen[spec.name]}"
        out.append((key, spec.build()))
    return out


def _model(ctx: Any) -> Any:
    """The run's trained model, or the spec's ``evaluate.model`` file; in eval mode."""
    model = ctx.model
    if model is None:
        from mfm_framework.checkpoint import load_flow_map

        model = load_flow_map(ctx.spec.evaluate.model, device=ctx.device).to(ctx.device, ctx.dtype)
        ctx.model = model
    return model.eval()


class _Counter:
    """Wraps a function and counts its calls (the NFE of a sampler, whatever its integrator)."""

    def __init__(self, fn: Callable[..., Tensor]) -> None:
        self.fn, self.calls = fn, 0

    def __call__(self, *args: Any, **kwargs: Any) -> Tensor:
        self.calls += 1
        return self.fn(*args, **kwargs)


def _seeds(generator: torch.Generator, count: int) -> list[int]:
    return [int(s) for s in torch.randint(0, 2**62, (count,), generator=generator)]


def _compare(
    metrics: list[tuple[str, Any]], samples: Tensor, reference: Tensor, seed: int
) -> dict[str, float]:
    """Every metric between ``samples`` and ``reference``, each with a CPU generator seeded ``seed``."""
    return {
        key: float(metric(samples=samples, reference=reference, generator=torch.Generator().manual_seed(seed)))
        for key, metric in metrics
    }


# ---------------------------------------------------------------------------- posterior part
def _posterior_part(ctx: Any, model: Any, metrics: list[tuple[str, Any]], plot: bool) -> tuple[dict[str, Any], Any]:
    from tqdm.auto import tqdm

    cfg, data = ctx.spec.evaluate, ctx.data
    interp = model.interpolant
    param = next(model.parameters())
    device, dtype = param.device, param.dtype
    glass_integrator = cfg.glass_integrator.build()
    contexts_gen = ctx.generator(_CONTEXTS, device="cpu")
    reference_gen = ctx.generator(_REFERENCE, device="cpu")
    model_gen = ctx.generator(_MODEL, device=device)
    metric_gen = ctx.generator(_METRIC, device="cpu")
    n, count = cfg.samples, cfg.contexts
    methods = [f"mfm-{k}" for k in cfg.mfm_steps] + [f"glass-{s}" for s in cfg.glass_steps] + [FLOOR]
    nfe: dict[str, int] = {f"mfm-{k}": k for k in cfg.mfm_steps}
    nfe[FLOOR] = 0
    plot_method = None if not cfg.mfm_steps else "mfm-1" if 1 in cfg.mfm_steps else f"mfm-{min(cfg.mfm_steps)}"
    by_t: dict[str, dict[str, dict[str, float]]] = {}
    panels: list[list[Any]] = []

    for t in tqdm(cfg.t_grid, desc="evaluate posterior", disable=None, leave=False):
        x_1 = data.sample(count, generator=contexts_gen).x_1.to(device=device, dtype=dtype)
        z = torch.randn(x_1.shape, generator=contexts_gen, dtype=dtype).to(device)
        times = torch.full((count,), float(t), device=device, dtype=dtype)
        # At t = 0 the context carries no information; training sets it to 0 there.
        x = torch.zeros_like(x_1) if t == 0 else interp.interpolate(x_0=z, x_1=x_1, t=times)

        def exact() -> Tensor:
            draws = data.posterior_sample(t=times, x=x, n=n, interpolant=interp, generator=reference_gen)
            return draws.to(device=device, dtype=dtype)

        reference = exact()
        draws: dict[str, Tensor] = {}
        for k in cfg.mfm_steps:
            draws[f"mfm-{k}"] = model.sample_posterior(t=times, x=x, n=n, steps=k, generator=model_gen)
        for s in cfg.glass_steps:
            denoiser = _Counter(lambda t_, x_: model.denoise(t=t_, x=x_))
            draws[f"glass-{s}"] = glass_posterior(
                denoiser=denoiser, interpolant=interp, inner=model.inner, t=times, x=x, n=n, steps=s,
                integrator=glass_integrator, generator=model_gen,
            )
            nfe[f"glass-{s}"] = denoiser.calls
        draws[FLOOR] = exact()

        seeds = _seeds(metric_gen, count)
        per_context = {m: [_compare(metrics, draws[m][j], reference[j], seeds[j]) for j in range(count)] for m in methods}
        row = by_t[_t_key(t)] = {}
        for method in methods:
            row[method] = {key: _mean([c[key] for c in per_context[method]]) for key, _ in metrics}
            ctx.log(
                {
                    "stage": "evaluate",
                    "part": "posterior",
                    "t": float(t),
                    "method": method,
                    "nfe": nfe[method],
                    **{key: _num(v) for key, v in row[method].items()},
                    "per_context": {key: [_num(c[key]) for c in per_context[method]] for key, _ in metrics},
                }
            )
        if x_1[0].numel() <= 64:  # the contexts themselves, where they are small enough to log
            ctx.log(
                {"stage": "evaluate", "part": "posterior-contexts", "t": float(t), "x": x.tolist(), "x_1": x_1.tolist()}
            )
        if plot and cfg.plot_contexts > 0 and plot_method is not None:
            panels.append(
                [
                    _panel(data, interp, t=float(t), x=x[j], x_1=x_1[j], model=draws[plot_method][j], exact=reference[j], label=plot_method)
                    for j in range(min(cfg.plot_contexts, count))
                ]
            )

    return _posterior_summary(cfg, methods, metrics, by_t, nfe), panels


def _posterior_summary(
    cfg: Any, methods: list[str], metrics: list[tuple[str, Any]], by_t: dict[str, Any], nfe: dict[str, int]
) -> dict[str, Any]:
    head = cfg.headline
    keys = [key for key, _ in metrics]
    mean = {m: {k: _mean([by_t[t][m][k] for t in by_t]) for k in keys} for m in methods}
    excess_by_t = {t: {m: by_t[t][m][head] - by_t[t][FLOOR][head] for m in methods if m != FLOOR} for t in by_t}
    excess_mean = {m: _mean([excess_by_t[t][m] for t in by_t]) for m in methods if m != FLOOR}
    return {
        "t_grid": [float(t) for t in cfg.t_grid],
        "contexts": cfg.contexts,
        "samples": cfg.samples,
        "by_t": {t: {m: {k: _num(v) for k, v in row.items()} for m, row in rows.items()} for t, rows in by_t.items()},
        "excess_by_t": {t: {m: _num(v) for m, v in rows.items()} for t, rows in excess_by_t.items()},
        "mean": {m: {k: _num(v) for k, v in row.items()} for m, row in mean.items()},
        "excess_mean": {m: _num(v) for m, v in excess_mean.items()},
        "nfe": {m: nfe[m] for m in methods},
        "glass_integrator": cfg.glass_integrator.name,
    }


def _panel(data: Any, interp: Any, *, t: float, x: Tensor, x_1: Tensor, model: Tensor, exact: Tensor, label: str) -> Any:
    """The data of one panel of the posterior plot, with the exact log-density on a grid (d <= 2)."""
    from mfm_framework.engine.plots import PosteriorPanel

    flat_model = model.reshape(model.shape[0], -1).double().cpu()
    flat_exact = exact.reshape(exact.shape[0], -1).double().cpu()
    d = flat_model.shape[1]
    contour = None
    if d <= 2 and x.dim() == 1:
        both = torch.cat([flat_exact, flat_model.clamp(flat_exact.min(0).values - 10, flat_exact.max(0).values + 10)])
        lo = torch.minimum(flat_exact.quantile(0.001, dim=0), both.quantile(0.01, dim=0))
        hi = torch.maximum(flat_exact.quantile(0.999, dim=0), both.quantile(0.99, dim=0))
        pad = 0.2 * (hi - lo) + 1e-3
        lo, hi = lo - pad, hi + pad
        axes = [torch.linspace(float(lo[i]), float(hi[i]), _CONTOUR_POINTS, dtype=torch.float64) for i in range(d)]
        if d == 2:
            gx, gy = torch.meshgrid(axes[0], axes[1], indexing="xy")
            points = torch.stack([gx.reshape(-1), gy.reshape(-1)], dim=-1)
        else:
            points = axes[0][:, None]
        try:
            logp = data.posterior_log_prob(
                t=torch.full((1,), t, dtype=x.dtype, device=x.device),
                x=x[None],
                x_1=points[None].to(device=x.device, dtype=x.dtype),
                interpolant=interp,
            )[0].double().cpu()
        except (ValueError, RuntimeError):  # a law without a density here (e.g. a point mass)
            logp = None
        if logp is not None and bool(torch.isfinite(logp).any()):
            contour = (gx, gy, logp.reshape(gx.shape)) if d == 2 else (axes[0], logp)
    return PosteriorPanel(t=t, model=flat_model, exact=flat_exact, context=x.reshape(-1), x_1=x_1.reshape(-1), contour=contour, label=label)


# ------------------------------------------------------------------------ unconditional part
def _unconditional_part(ctx: Any, model: Any, metrics: list[tuple[str, Any]]) -> tuple[dict[str, Any], dict[str, Tensor]]:
    cfg, data = ctx.spec.evaluate, ctx.data
    param = next(model.parameters())
    device, dtype = param.device, param.dtype
    data_gen = ctx.generator(_UNCOND_DATA, device="cpu")
    model_gen = ctx.generator(_UNCOND_MODEL, device=device)
    metric_seed = _seeds(ctx.generator(_METRIC + 1, device="cpu"), 1)[0]
    n = cfg.unconditional_samples
    integrator = cfg.ode_integrator.build()

    reference = data.sample(n, generator=data_gen).x_1.to(device=device, dtype=dtype)
    samples: dict[str, Tensor] = {FLOOR: data.sample(n, generator=data_gen).x_1.to(device=device, dtype=dtype)}
    nfe: dict[str, int] = {FLOOR: 0}
    for k in cfg.kernel_steps:
        samples[f"kernel-{k}"] = kernel_sample(model, n=n, steps=k, generator=model_gen)
        nfe[f"kernel-{k}"] = k
    for s in cfg.ode_steps:
        result = ode_sample(
            model, n=n, integrator=integrator, times=uniform_grid(0.0, 1.0, s, dtype=dtype, device=device), generator=model_gen
        )
        samples[f"ode-{s}"] = result.x
        nfe[f"ode-{s}"] = result.nfe

    head = cfg.headline
    distances = {m: _compare(metrics, x, reference, metric_seed) for m, x in samples.items()}
    over_floor = {m: _ratio(d[head], distances[FLOOR][head]) for m, d in distances.items()}
    for method, values in distances.items():
        ctx.log(
            {
                "stage": "evaluate",
                "part": "unconditional",
                "method": method,
                "nfe": nfe[method],
                **{k: _num(v) for k, v in values.items()},
                f"{head}_over_floor": over_floor[method],
            }
        )
    summary = {
        "samples": n,
        "nfe": nfe,
        "distances": {m: {k: _num(v) for k, v in d.items()} for m, d in distances.items()},
        "over_floor": over_floor,
        "ode_integrator": cfg.ode_integrator.name,
    }
    return summary, {"data": reference, **{m: x for m, x in samples.items() if m != FLOOR}}


# ---------------------------------------------------------------------------------------- plots
def _write_plots(ctx: Any, summary: dict[str, Any], panels: Any, unconditional: dict[str, Tensor] | None) -> list[str]:
    from mfm_framework.engine import plots

    cfg, head = ctx.spec.evaluate, ctx.spec.evaluate.headline
    written: list[str] = []
    post = summary.get("posterior")
    if isinstance(post, dict):
        if panels:
            written.append(
                plots.posterior_plot(
                    ctx.run_dir / "posterior.png",
                    panels,
                    title=f"{panels[0][0].label} posterior draws over the exact posterior",
                )
            )
        curves: dict[str, tuple[list[float], list[float]]] = {}
        per_t: dict[str, dict[str, tuple[list[float], list[float]]]] = {}
        for label, prefix, steps in (("MFM", "mfm", cfg.mfm_steps), ("GLASS", "glass", cfg.glass_steps)):
            keys = [f"{prefix}-{k}" for k in steps]
            if not keys:
                continue
            nfes = [post["nfe"][k] for k in keys]
            curves[f"{label} ({post['glass_integrator']})" if prefix == "glass" else label] = (
                nfes,
                [post["excess_mean"][k] for k in keys],
            )
            per_t[next(reversed(curves))] = {
                t: (nfes, [post["excess_by_t"][t][k] for k in keys]) for t in post["excess_by_t"]
            }
        floor = post["mean"][FLOOR][head]
        written.append(
            plots.distance_vs_nfe_plot(
                ctx.run_dir / "distance_vs_nfe.png",
                curves,
                floor=floor,
                metric=head,
                per_t=per_t,
                title=f"posterior {head} excess vs NFE (thin: each t)",
            )
        )
    if unconditional is not None:
        unc = summary["unconditional"]
        titles = {"data": f"data (n = {unc['samples']})"}
        for m in unconditional:
            if m != "data":
                ratio = unc["over_floor"][m]
                titles[m] = f"{m}: {head} {unc['distances'][m][head]:.3g}" + (f" ({ratio:.2g}x floor)" if ratio is not None else "")
        written.append(plots.samples_over_density_plot(ctx.run_dir / "unconditional.png", unconditional, titles=titles))
    return written


# ---------------------------------------------------------------------------------------- table
def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, int):
        return str(value)
    value = float(value)
    if not math.isfinite(value):
        return str(value)
    if value == 0:
        return "0"
    if 1e-3 <= abs(value) < 1e4:
        return f"{value:.4g}" if abs(value) >= 1 else f"{value:.4f}"
    return f"{value:.2e}"


def _grid(headers: list[str], rows: list[list[Any]], *, rules: Sequence[int] = ()) -> list[str]:
    """A fixed-width table: first column left-aligned, the others right-aligned; a rule under the
    header and before each row index in ``rules``."""
    cells = [[str(h) for h in headers]] + [[c if isinstance(c, str) else _fmt(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]

    def line(row: list[str]) -> str:
        return "  " + "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths)))

    rule = "  " + "  ".join("-" * w for w in widths)
    out = [line(cells[0]), rule]
    for i, row in enumerate(cells[1:]):
        if i in rules:
            out.append(rule)
        out.append(line(row))
    return out


def format_evaluation(summary: dict[str, Any]) -> str:
    """The evaluate stage's results as fixed-width tables (what ``mfm run`` prints)."""
    head = summary["headline_metric"]
    lines: list[str] = []
    post = summary.get("posterior")
    if isinstance(post, dict):
        t_keys = list(post["by_t"])
        methods = [m for m in post["nfe"] if m != FLOOR]
        lines.append(
            f"evaluate: posterior {head} to the exact posterior, minus the noise floor "
            f"({post['contexts']} contexts x {post['samples']} draws per t; about 0 = as good as exact sampling)"
        )
        rows: list[list[Any]] = [
            [m, post["nfe"][m], *(post["excess_by_t"][t][m] for t in t_keys), post["excess_mean"][m]] for m in methods
        ]
        rows.append([f"{FLOOR} (raw {head})", 0, *(post["by_t"][t][FLOOR][head] for t in t_keys), post["mean"][FLOOR][head]])
        rules = [i for i in range(1, len(methods)) if methods[i].split("-")[0] != methods[i - 1].split("-")[0]]
        lines += _grid(["method", "NFE", *(f"t={t}" for t in t_keys), "mean"], rows, rules=[*rules, len(methods)])
        keys = list(next(iter(post["mean"].values())))
        lines += ["", f"evaluate: posterior, every metric averaged over t (raw values; {FLOOR}: exact vs exact)"]
        rows = [
            [m, post["nfe"][m], *(post["mean"][m][k] for k in keys), post["excess_mean"].get(m, 0.0)]
            for m in [*methods, FLOOR]
        ]
        lines += _grid(["method", "NFE", *keys, f"{head} excess"], rows, rules=[*rules, len(methods)])
    else:
        lines.append(f"evaluate: posterior {post}")
    lines.append("")
    unc = summary.get("unconditional")
    if isinstance(unc, dict):
        methods = [m for m in unc["distances"] if m != FLOOR]
        keys = list(unc["distances"][FLOOR])
        lines.append(
            f"evaluate: unconditional samples vs the data ({unc['samples']} each; ode: {unc['ode_integrator']}; "
            f"{FLOOR}: exact vs exact)"
        )
        rows = [[m, unc["nfe"][m], *(unc["distances"][m][k] for k in keys), unc["over_floor"][m]] for m in methods]
        rows.append([FLOOR, 0, *(unc["distances"][FLOOR][k] for k in keys), unc["over_floor"][FLOOR]])
        rules = [i for i in range(1, len(methods)) if methods[i].split("-")[0] != methods[i - 1].split("-")[0]]
        lines += _grid(["method", "NFE", *keys, f"{head}/floor"], rows, rules=[*rules, len(methods)])
    else:
        lines.append(f"evaluate: unconditional {unc}")
    if summary.get("plots"):
        lines += ["", "plots: " + ", ".join(summary["plots"])]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------- stage
def _checks(cfg: Any, summary: dict[str, Any]) -> dict[str, Any]:
    checks: dict[str, Any] = {}
    post, unc = summary.get("posterior"), summary.get("unconditional")
    if isinstance(post, dict) and 1 in cfg.mfm_steps and 8 in cfg.glass_steps:
        checks["mfm1_vs_glass8_excess"] = [post["excess_mean"]["mfm-1"], post["excess_mean"]["glass-8"]]
    if isinstance(unc, dict) and 1 in cfg.kernel_steps:
        checks["kernel1_over_floor"] = unc["over_floor"]["kernel-1"]
    return checks


def evaluate_stage(ctx: Any) -> dict[str, Any]:
    """Evaluate the run's model (or ``evaluate.model``) against the exact law of the data.

    Writes one ``metrics.jsonl`` record per (part, context time, method), the PNG plots (when
    ``evaluate.plots``) into the run directory, and the printed table into
    ``ctx.tables["evaluate"]``; calls the ``mfm_evaluation_results`` hook.

    Returns:
        The summary: ``headline_metric``; ``posterior`` (``t_grid``, ``contexts``, ``samples``,
        ``by_t`` (t -> method -> metric, mean over contexts), ``excess_by_t`` (t -> method ->
        headline minus floor), ``mean`` (method -> metric, mean over t), ``excess_mean``,
        ``nfe``, ``glass_integrator``) or a ``"skipped: ..."`` string; ``unconditional``
        (``samples``, ``nfe``, ``distances`` (method -> metric), ``over_floor`` (headline /
        floor), ``ode_integrator``) or a ``"skipped: ..."`` string; ``checks``; ``plots`` (file
        names in the run directory); ``seconds``.
    """
    began = time.time()
    cfg = ctx.spec.evaluate
    data = ctx.data
    model = _model(ctx)
    metrics = _metrics(cfg)
    if cfg.headline not in {key for key, _ in metrics}:
        raise ValueError(f"evaluate.headline {cfg.headline!r} is not one of the metrics {[k for k, _ in metrics]}")
    summary: dict[str, Any] = {"headline_metric": cfg.headline}
    panels: Any = None
    unconditional: dict[str, Tensor] | None = None
    with torch.no_grad():
        if not cfg.t_grid:
            summary["posterior"] = "skipped: evaluate.t_grid is empty"
        elif data is not None and isinstance(data, ExactData):
            summary["posterior"], panels = _posterior_part(ctx, model, metrics, plot=cfg.plots)
        else:
            summary["posterior"] = POSTERIOR_SKIPPED
        if data is not None and isinstance(data, SamplableData):
            summary["unconditional"], unconditional = _unconditional_part(ctx, model, metrics)
        else:
            summary["unconditional"] = UNCONDITIONAL_SKIPPED
    summary["checks"] = _checks(cfg, summary)
    summary["plots"] = _write_plots(ctx, summary, panels, unconditional) if cfg.plots else []
    summary["seconds"] = round(time.time() - began, 2)
    ctx.tables["evaluate"] = format_evaluation(summary)
    ctx.plugins.hook.mfm_evaluation_results(run=ctx, stage="evaluate", results=summary)
    return summary
