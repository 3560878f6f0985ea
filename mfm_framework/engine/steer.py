"""The steer stage: steer a meta flow map toward ``p_1 exp(r) / Z`` and measure every method exactly.

Generic over rewards, value estimators, integrators, metrics and data: every component comes from
the ``[steer]`` section of the spec (MATH.md sections 6 and 8). The data source must know its
tilts (:class:`~mfm_framework.interfaces.TiltableData`) and the reward must have a closed form,
so that the target ``p_r = p_1 exp(r) / Z`` is known exactly.

**Methods.** Each ``[[steer.methods]]`` table is run at every budget it lists (each combination
of its ``steps``, ``particles`` and ``draws``). An estimator method starts from one set of
pure-noise draws shared by every estimator method, integrates the unsteered base ODE to ``t_min``
(:func:`~mfm_framework.steering.unsteered_start`), then the steered ODE or SDE to 1
(:func:`~mfm_framework.steering.steered_sample`); a baseline runs its function of
:mod:`mfm_framework.baselines` (Best-of-N, SIR, SMC, MFM-Search). A fresh
:class:`~mfm_framework.ledger.CostLedger` attached to the model and the reward counts what each
run really evaluates (the start included): per-sample base and MFM forwards, backwards, reward
calls, the NFE under the paper's accounting, and the wall time. SMC's mean effective sample size
at each grid time is kept in the run's flags (``ess_mean``).

**Measures** of each run's ``samples`` outputs, against one set of exact draws of ``p_r`` of the
same size:

- every metric, and the noise floor: the same metric between independent exact sets and the
  reference, averaged over ``floor_repeats`` sets (their standard deviation is the floor's
  spread); the *excess* is the headline metric minus the floor's;
- the mode-weight error, when the tilted law is a mixture (it has ``means``, ``covariances``
  and ``weights``): the total variation between the tilted weights and the mean exact
  responsibilities of the samples (0 in expectation for exact draws; the floor's is its noise);
- the mean reward and the mean of each reward term (unweighted).

**Diagnostics** (``[steer.diagnostics]``): on contexts ``x ~ p_t`` (exact data draws pushed to
``t``), each estimator's ``grad V_t(x)`` with ``particles = N`` against the reference estimator's:
the relative error ``sqrt(sum |g - g_ref|^2 / sum |g_ref|^2)`` over the contexts and the mean
cosine, per ``t`` and averaged over ``t``.

**Checks** compare the ``headline_method`` with the others: the excess ratio at equal steering
steps, the NFE another method needs to reach its excess, the drop of each estimator's grad-V
error from the smallest to the largest N, and the reference estimator's distance over the floor.

Random streams are offsets of ``run.seed`` (see :meth:`RunContext.generator`); each run's model
noise is seeded from the run's label and budget, so adding a method changes no other method's
numbers.
"""

from __future__ import annotations

import math
import sys
import time
import zlib
from typing import Any

import attrs
import torch
from torch import Tensor

from mfm_framework.engine.evaluate import FLOOR, _compare, _fmt, _grid, _mean, _metrics, _num, _ratio, _seeds
from mfm_framework.errors import MfmUserError
from mfm_framework.grids import uniform_grid
from mfm_framework.interfaces import SteeringContext, TiltableData
from mfm_framework.ledger import CostLedger
from mfm_framework.rewards import WeightedReward
from mfm_framework.spec.loader import steer_method_labels
from mfm_framework.steering import steered_sample, unsteered_start

__all__ = ["steer_stage", "format_steering", "STEER_STREAM", "MethodRun"]

#: Offset of ``run.seed`` of the steer stage's random streams (training uses 1 to 3, evaluate 10 to 16).
STEER_STREAM = 20
_REFERENCE, _START, _METRIC, _DIAG_DATA, _DIAG_MODEL, _RUNS = range(STEER_STREAM, STEER_STREAM + 6)
_CONTOUR_POINTS = 150


# ------------------------------------------------------------------------------------- helpers
def _model(ctx: Any) -> Any:
    """``steer.model`` when given, else the run's trained model; frozen, in eval mode."""
    cfg = ctx.spec.steer
    if cfg.model is not None:
        from mfm_framework.checkpoint import load_flow_map

        model = load_flow_map(cfg.model, device=ctx.device, registry=ctx.plugins.registry)
    elif ctx.model is not None:
        model = ctx.model
    else:
        raise MfmUserError("steer: no model: give steer.model (a model.pt) or add a [train] section")
    return model.to(ctx.device, ctx.dtype).eval().requires_grad_(False)


def build_reward(cfg: Any) -> WeightedReward:
    """The weighted sum of the ``[[steer.rewards]]`` terms."""
    return WeightedReward([(term.weight, term.reward.build(), term.label) for term in cfg.rewards])


def _has_particles(options: Any) -> bool:
    return attrs.has(type(options)) and any(f.name == "particles" for f in attrs.fields(type(options)))


def _with_particles(spec: Any, n: int | None) -> Any:
    """The estimator of ``spec`` with its ``particles`` option set to ``n`` (when it has one)."""
    if n is None or not _has_particles(spec.options):
        return spec.build()
    return spec.component(attrs.evolve(spec.options, particles=n))


def _seed_of(base: int, *parts: Any) -> int:
    return (base * 1_000_003 + zlib.crc32("/".join(map(str, parts)).encode())) % (2**62)


def _to_cpu64(x: Tensor) -> Tensor:
    return x.detach().reshape(x.shape[0], -1).to("cpu", torch.float64)


@attrs.frozen(kw_only=True)
class MethodRun:
    """One method at one budget: what it is and what its samples measured."""

    label: str
    steps: int
    particles: int | None
    record: dict[str, Any]


def _mixture(law: Any) -> tuple[Tensor, Tensor, Tensor] | None:
    """``(means [K, d], covariances [K, d, d], weights [K])`` of a mixture law, or None."""
    parts = [getattr(law, name, None) for name in ("means", "covariances", "weights")]
    if not all(torch.is_tensor(p) for p in parts):
        return None
    means, covs, weights = (p.detach().to("cpu", torch.float64) for p in parts)
    if means.ndim != 2 or covs.ndim != 3 or weights.ndim != 1:
        return None
    return means, covs, weights


def _mode_weights(mixture: tuple[Tensor, Tensor, Tensor], x: Tensor) -> Tensor:
    """Mean exact responsibilities of the components for samples ``x`` ``[n, d]``: ``[K]``."""
    means, covs, weights = mixture
    x = _to_cpu64(x)
    if x.shape[1] != means.shape[1]:
        raise ValueError(f"samples of dimension {x.shape[1]} for a mixture of dimension {means.shape[1]}")
    dist = torch.distributions.MultivariateNormal(means, covariance_matrix=covs)
    finite = torch.isfinite(x).all(1)
    log_joint = dist.log_prob(x[finite][:, None, :]) + weights.log()
    resp = torch.softmax(log_joint, dim=1)
    # A non-finite sample belongs to no mode: its mass is missing from every weight.
    return resp.sum(0) / x.shape[0]


def _total_variation(p: Tensor, q: Tensor) -> float:
    return 0.5 * float((p - q).abs().sum())


def _reward_means(reward: WeightedReward, x: Tensor) -> tuple[float, dict[str, float]]:
    total, terms = reward.evaluate(x)
    return _num(total.double().mean()), {k: _num(v.double().mean()) for k, v in terms.items()}


# ------------------------------------------------------------------------------------ one run
def _run_method(
    *, model: Any, reward: WeightedReward, data: Any, method: Any, steps: int, particles: int | None,
    draws: int | None, noise: Tensor, generator: torch.Generator, batch_size: int,
) -> tuple[Tensor, Any, dict[str, Any]]:
    """Run one method at one budget on ``noise.shape[0]`` output samples, in batches.

    Estimator methods start from ``noise`` (``[n, *D]`` draws of ``N(0, I)``, shared by every
    method); the baselines draw their own starts from ``generator``.

    Returns:
        The samples, the cost per output sample (counted by one fresh ledger: the start included)
        and the method's flags (those of its last batch; ``clamped`` of any batch).
    """
    from mfm_framework import baselines

    integrator = method.integrator.build()
    ledger = CostLedger()
    context = SteeringContext(model=model, reward=reward, generator=generator, ledger=ledger, data=data)
    param = next(model.parameters())
    kind = method.baseline
    if kind is None:
        estimator = _with_particles(method.estimator, particles)
        times = uniform_grid(method.t_min, 1.0, steps, dtype=param.dtype, device=param.device)
    elif kind == "smc":
        estimator = method.estimator.build()
        times = uniform_grid(method.t_min, 1.0, steps, dtype=param.dtype, device=param.device)
    elif kind == "mfm-search":
        times = uniform_grid(0.0, 1.0, steps, dtype=param.dtype, device=param.device)
    elif method.sampler == "kernel":
        sampler = baselines.KernelSampler(steps=steps)
    else:
        sampler = baselines.ODESampler(integrator=integrator, times=uniform_grid(0.0, 1.0, steps, dtype=param.dtype, device=param.device))
    out: list[Tensor] = []
    ess: list[Tensor] = []
    flags: dict[str, Any] = {}
    clamped = False
    with ledger.attach(model):
        for chunk in noise.split(batch_size):
            size = chunk.shape[0]
            if kind is None:
                x = unsteered_start(model=model, integrator=integrator, noise=chunk, t_min=method.t_min, steps=method.start_steps)
                result: Any = steered_sample(
                    estimator=estimator, integrator=integrator, context=context, x=x, times=times,
                    sde=method.sde, g_max=method.g_max, renormalize=method.renormalize,
                )
                clamped = clamped or result.clamped
            elif kind in ("best-of-n", "sir"):
                run = baselines.best_of_n if kind == "best-of-n" else baselines.sir
                assert draws is not None
                result = run(context=context, n=size, draws=draws, sampler=sampler, max_batch=batch_size * 16)
            elif kind == "smc":
                assert particles is not None
                result = baselines.smc(
                    context=context, estimator=estimator, integrator=integrator, times=times, n=size,
                    particles=particles, ess_threshold=method.ess_threshold, resampling=method.resampling,
                    start_steps=method.start_steps,
                )
            else:
                assert draws is not None
                result = baselines.mfm_search(
                    context=context, n=size, draws=draws, times=times, particles=particles or 1,
                    posterior_steps=method.posterior_steps,
                )
            out.append(result.samples)
            flags = result.flags()
            if getattr(result, "ess", None) is not None:  # SMC: the ESS trace, [K + 1, groups]
                ess.append(result.ess)
    if ess:
        flags["ess_mean"] = [_num(v) for v in torch.cat(ess, dim=1).double().mean(1)]
    if kind is None:
        flags["clamped"] = clamped
        flags["start_steps"] = method.start_steps
    return torch.cat(out), ledger.cost(samples=noise.shape[0]), flags


# ------------------------------------------------------------------------------ diagnostics
def _diagnosed(cfg: Any) -> list[tuple[str, Any]]:
    """``(label, estimator spec)`` of the estimators to diagnose."""
    diag = cfg.diagnostics
    if diag.estimators is not None:
        specs = list(diag.estimators)
    else:
        specs, seen = [], set()
        for method in cfg.methods:
            spec = method.estimator
            if method.baseline is not None or spec is None or spec.component is diag.reference.component:
                continue
            fields = attrs.asdict(spec.options) if attrs.has(type(spec.options)) else {}
            fields.pop("particles", None)
            key = (spec.name, repr(sorted(fields.items())))
            if key not in seen:
                seen.add(key)
                specs.append(spec)
    labels: list[tuple[str, Any]] = []
    count: dict[str, int] = {}
    for spec in specs:
        count[spec.name] = count.get(spec.name, 0) + 1
        labels.append((spec.name if count[spec.name] == 1 else f"{spec.name}-{count[spec.name]}", spec))
    return labels


def _diagnostics(ctx: Any, model: Any, reward: WeightedReward) -> dict[str, Any]:
    from tqdm.auto import tqdm

    cfg, data = ctx.spec.steer, ctx.data
    diag = cfg.diagnostics
    param = next(model.parameters())
    device, dtype = param.device, param.dtype
    interp = model.interpolant
    data_gen = ctx.generator(_DIAG_DATA, device="cpu")
    reference = diag.reference.build()
    estimators = _diagnosed(cfg)
    ns = list(diag.particles)
    rel: dict[str, dict[str, dict[str, float]]] = {label: {} for label, _ in estimators}
    cos: dict[str, dict[str, dict[str, float]]] = {label: {} for label, _ in estimators}
    varies = {label: _has_particles(spec.options) for label, spec in estimators}
    total = len(diag.t_grid) * sum(len(ns) if varies[label] else 1 for label, _ in estimators)
    bar = tqdm(total=total, desc="steer diagnostics", disable=None, leave=False)
    for t in diag.t_grid:
        key = f"{t:g}"
        x_1 = data.sample(diag.contexts, generator=data_gen).x_1.to(device=device, dtype=dtype)
        z = torch.randn(x_1.shape, generator=data_gen, dtype=dtype).to(device)
        times = torch.full((diag.contexts,), float(t), device=device, dtype=dtype)
        x = interp.interpolate(x_0=z, x_1=x_1, t=times)
        gen = torch.Generator(device=device).manual_seed(_seed_of(ctx.spec.run.seed + _DIAG_MODEL, "reference", key))
        context = SteeringContext(model=model, reward=reward, generator=gen, data=data)
        with torch.no_grad():
            g_ref = _to_cpu64(reference.grad_value(t=times, x=x, context=context))
        for label, spec in estimators:
            for n in ns if varies[label] else [None]:
                gen = torch.Generator(device=device).manual_seed(_seed_of(ctx.spec.run.seed + _DIAG_MODEL, label, key, n))
                context = SteeringContext(model=model, reward=reward, generator=gen, data=data)
                with torch.no_grad():
                    g = _to_cpu64(_with_particles(spec, n).grad_value(t=times, x=x, context=context))
                err = float((g - g_ref).square().sum().sqrt() / g_ref.square().sum().sqrt().clamp_min(1e-300))
                cosine = float(torch.nn.functional.cosine_similarity(g, g_ref, dim=1, eps=1e-30).mean())
                for n_key in ([str(n)] if n is not None else [str(m) for m in ns]):
                    rel[label].setdefault(n_key, {})[key] = _num(err)
                    cos[label].setdefault(n_key, {})[key] = _num(cosine)
                ctx.log({
                    "stage": "steer", "part": "diagnostics", "t": float(t), "estimator": label, "particles": n,
                    "relative_error": _num(err), "cosine": _num(cosine),
                })
                bar.update(1)
    bar.close()
    mean_rel = {label: {n: _num(_mean(list(by_t.values()))) for n, by_t in rows.items()} for label, rows in rel.items()}
    mean_cos = {label: {n: _num(_mean(list(by_t.values()))) for n, by_t in rows.items()} for label, rows in cos.items()}
    return {
        "reference": diag.reference.name,
        "t_grid": [float(t) for t in diag.t_grid],
        "contexts": diag.contexts,
        "particles": ns,
        "varies_with_particles": varies,
        "relative_error": mean_rel,
        "cosine": mean_cos,
        "relative_error_by_t": rel,
        "cosine_by_t": cos,
    }


# ---------------------------------------------------------------------------------- checks
def _checks(cfg: Any, labels: list[str], runs: list[MethodRun], excess: dict[str, float], diagnostics: Any) -> dict[str, Any]:
    head_label = cfg.headline_method or labels[0]
    by_label: dict[str, list[MethodRun]] = {}
    for run in runs:
        by_label.setdefault(run.label, []).append(run)
    checks: dict[str, Any] = {"headline_method": head_label}
    mine = by_label.get(head_label, [])
    if not mine:
        return checks

    def best_at(rows: list[MethodRun], steps: int) -> MethodRun:  # the largest budget at these steps
        at = [r for r in rows if r.steps == steps]
        return max(at, key=lambda r: r.record["cost"]["nfe"])

    def steered(rows: list[MethodRun]) -> bool:
        return rows[0].record["method"] == "steered"

    same: dict[str, Any] = {}
    for label, rows in by_label.items():
        common = sorted({r.steps for r in rows} & {r.steps for r in mine})
        if label == head_label or not common or not (steered(rows) and steered(mine)):
            continue  # "steps" are steering steps only for the steered methods
        pairs = {k: (excess[_key(best_at(mine, k))], excess[_key(best_at(rows, k))]) for k in common}
        k = common[-1]
        a, b = pairs[k]
        same[label] = {
            "steps": k,  # the largest common number of steps
            "excess": [_num(a), _num(b)],
            "ratio": _ratio(a, b) if b > 0 else None,
            "by_steps": {str(s): [_num(x), _num(y)] for s, (x, y) in pairs.items()},
            # the headline's excess over the other's at every common number of steps (None where
            # the other's is not positive: no ratio says "at most half" of that)
            "ratio_by_steps": {str(s): (_ratio(x, y) if y > 0 else None) for s, (x, y) in pairs.items()},
        }
    checks["excess_ratio_same_steps"] = same

    def nfe_to_match(target_run: MethodRun) -> dict[str, Any]:
        target, nfe_target = excess[_key(target_run)], target_run.record["cost"]["nfe"]
        match: dict[str, Any] = {}
        for label, rows in by_label.items():
            if label == head_label:
                continue
            ordered = sorted(rows, key=lambda r: r.record["cost"]["nfe"])
            hit = next((r for r in ordered if excess[_key(r)] <= target), None)
            most = ordered[-1].record["cost"]["nfe"]
            match[label] = {
                "reached": hit is not None,
                # the NFE of the cheapest budget that reaches the target excess, or (not reached)
                # a lower bound: the largest budget tried
                "nfe": _num(hit.record["cost"]["nfe"] if hit is not None else most),
                "nfe_ratio": _ratio(hit.record["cost"]["nfe"] if hit is not None else most, nfe_target),
            }
        return {"target_excess": _num(target), "target_nfe": _num(nfe_target), "methods": match}

    # against the headline's largest budget, and against each of its budgets
    checks["nfe_to_match"] = nfe_to_match(max(mine, key=lambda r: r.record["cost"]["nfe"]))
    checks["nfe_to_match_by_budget"] = {_key(r): nfe_to_match(r) for r in sorted(mine, key=lambda r: r.record["cost"]["nfe"])}

    if isinstance(diagnostics, dict):
        first, last = str(diagnostics["particles"][0]), str(diagnostics["particles"][-1])
        checks["grad_error_drop"] = {
            label: _ratio(rows[first], rows[last]) for label, rows in diagnostics["relative_error"].items()
        }
        reference = cfg.diagnostics.reference.component
        over: dict[str, Any] = {}
        for method, label in zip(cfg.methods, labels):
            if method.baseline is None and method.estimator.component is reference and by_label.get(label):
                top_ref = max(by_label[label], key=lambda r: r.record["cost"]["nfe"])
                over[label] = _ratio(top_ref.record["distances"][cfg.headline], top_ref.record["floor"])
        if over:
            checks["reference_over_floor"] = over
    return checks


def _key(run: MethodRun) -> str:
    return run.record["run"]


# ------------------------------------------------------------------------------------- plots
def _write_plots(ctx: Any, summary: dict[str, Any], samples: dict[str, Tensor], reference: Tensor, law: Any, model: Any) -> list[str]:
    from mfm_framework.engine import plots

    cfg = ctx.spec.steer
    head = cfg.headline
    written: list[str] = []
    curves: dict[str, tuple[list[float], list[float]]] = {}
    for run in summary["runs"]:
        xs, ys = curves.setdefault(run["label"], ([], []))
        xs.append(run["cost"]["nfe"])
        ys.append(run["excess"])
    written.append(
        plots.distance_vs_nfe_plot(
            ctx.run_dir / "steer_distance_vs_nfe.png", curves, floor=summary["floor"][head], metric=head,
            title=f"steering: {head} to the exact tilted law minus the floor", ylabel=f"{head} minus noise floor",
        )
    )
    diag = summary.get("diagnostics")
    if isinstance(diag, dict) and diag["relative_error"]:
        lines = {label: ([int(n) for n in rows], list(rows.values())) for label, rows in diag["relative_error"].items()}
        written.append(
            plots.error_vs_particles_plot(
                ctx.run_dir / "steer_grad_error_vs_n.png", lines,
                title=f"grad V relative error vs N against {diag['reference']!r} (mean over t)",
            )
        )
    if samples and cfg.plot_methods > 0:
        contour = _density_grid(law, model, reference)
        panels = {"exact tilted": reference, **samples}
        written.append(plots.samples_over_density_plot(ctx.run_dir / "steer_samples.png", panels, contour=contour))
    return written


def _density_grid(law: Any, model: Any, reference: Tensor) -> Any:
    """``(X, Y, log p_r)`` on a grid around the exact samples (2-D data only), or None.

    ``log p_r`` is the tilted law's posterior density at context time 0 (which is ``p_r`` itself).
    """
    ref = _to_cpu64(reference)
    if ref.shape[1] != 2 or not hasattr(law, "posterior_log_prob"):
        return None
    lo, hi = ref.quantile(0.001, dim=0), ref.quantile(0.999, dim=0)
    pad = 0.35 * (hi - lo) + 1e-3
    lo, hi = lo - pad, hi + pad
    axes = [torch.linspace(float(lo[i]), float(hi[i]), _CONTOUR_POINTS, dtype=torch.float64) for i in range(2)]
    gx, gy = torch.meshgrid(axes[0], axes[1], indexing="xy")
    points = torch.stack([gx.reshape(-1), gy.reshape(-1)], dim=-1)
    try:
        logp = law.posterior_log_prob(
            t=torch.zeros(1, dtype=torch.float64), x=torch.zeros(1, 2, dtype=torch.float64),
            x_1=points[None], interpolant=model.interpolant,
        )[0].double()
    except (ValueError, RuntimeError, TypeError):
        return None
    return gx, gy, logp.reshape(gx.shape)


# ---------------------------------------------------------------------------------------- table
def _dash(value: Any) -> Any:
    return "-" if value is None else value


def format_steering(summary: dict[str, Any]) -> str:
    """The steer stage's results as fixed-width tables (what ``mfm run`` prints)."""
    head = summary["headline_metric"]
    keys = list(summary["floor"])
    lines = [
        f"steer: reward {summary['reward']}; {summary['samples']} samples per run vs as many exact draws of the "
        f"tilted law; NFE per sample (paper: backward = 2), start included",
        f"  {FLOOR}: exact vs exact, mean of {summary['floor_repeats']} sets (std "
        + ", ".join(f"{k} {_fmt(v)}" for k, v in summary["floor_spread"].items())
        + f"); mode TV and rewards of one exact set; excess = {head} minus the floor's",
    ]
    term_labels = list(summary["reward_terms"])
    rows: list[list[Any]] = []
    rules: list[int] = []
    previous = None
    for i, run in enumerate(summary["runs"]):
        if previous is not None and run["label"] != previous:
            rules.append(i)
        previous = run["label"]
        c = run["cost"]
        rows.append([
            run["label"], run["steps"], _dash(run["particles"]), _dash(run["draws"]), c["nfe"],
            *(run["distances"][k] for k in keys), run["excess"], run["mode_tv"], run["mean_reward"],
            *(run["reward_terms"][t] for t in term_labels if len(term_labels) > 1), c["wall_s"],
        ])
    rules.append(len(rows))
    fl = summary["floor_record"]
    rows.append([
        FLOOR + " (exact)", "-", "-", "-", 0, *(summary["floor"][k] for k in keys), 0.0, fl["mode_tv"], fl["mean_reward"],
        *(fl["reward_terms"][t] for t in term_labels if len(term_labels) > 1), "-",
    ])
    headers = ["method", "K", "N", "draws", "NFE", *keys, f"{head} excess", "mode TV", "mean r",
               *(f"r[{t}]" for t in term_labels if len(term_labels) > 1), "wall s"]
    lines += _grid(headers, rows, rules=rules)
    costs = [[r["label"], r["steps"], _dash(r["particles"]), _dash(r["draws"]),
              r["cost"]["base_forwards"], r["cost"]["mfm_forwards"], r["cost"]["backwards"], r["cost"]["reward_calls"],
              r["cost"]["nfe"], " ".join(f for f in r["notes"]) or "-"] for r in summary["runs"]]
    lines += ["", "steer: counted cost per sample (rows through each network and the reward)"]
    lines += _grid(["method", "K", "N", "draws", "base", "mfm", "backward", "reward", "NFE", "notes"], costs, rules=rules[:-1])
    diag = summary.get("diagnostics")
    if isinstance(diag, dict):
        ns = [str(n) for n in diag["particles"]]
        lines += ["", f"steer: grad V_t against {diag['reference']!r} on {diag['contexts']} contexts x ~ p_t per t "
                  f"(t in {', '.join(f'{t:g}' for t in diag['t_grid'])}; mean over t): relative error | cosine"]
        drows = [[label, *(diag["relative_error"][label][n] for n in ns), *(diag["cosine"][label][n] for n in ns)]
                 for label in diag["relative_error"]]
        lines += _grid(["estimator", *(f"err N={n}" for n in ns), *(f"cos N={n}" for n in ns)], drows)
    elif diag is not None:
        lines += ["", f"steer: diagnostics {diag}"]
    checks = summary.get("checks", {})
    if checks:
        lines += ["", f"steer: checks against {checks.get('headline_method')!r}"]
        for label, c in checks.get("excess_ratio_same_steps", {}).items():
            ratios = c.get("ratio_by_steps", {})
            others = ", ".join(
                f"K={k}: {_fmt(a)} vs {_fmt(b)} (ratio {_fmt(ratios.get(k))})"
                for k, (a, b) in c["by_steps"].items() if int(k) != c["steps"]
            )
            lines.append(
                f"  {head} excess at K={c['steps']}: {_fmt(c['excess'][0])} vs {label} {_fmt(c['excess'][1])} "
                f"(ratio {_fmt(c['ratio'])})" + (f"; {others}" if others else "")
            )
        match = checks.get("nfe_to_match")
        if match:
            for label, c in match["methods"].items():
                how = "reaches it at" if c["reached"] else "does not reach it up to"
                lines.append(f"  {label} {how} {_fmt(c['nfe'])} NFE = {_fmt(c['nfe_ratio'])}x the {_fmt(match['target_nfe'])} NFE for excess {_fmt(match['target_excess'])}")
        by_budget = checks.get("nfe_to_match_by_budget") or {}
        if len(by_budget) > 1:
            targets = ", ".join(f"{key}: {_fmt(m['target_excess'])} at {_fmt(m['target_nfe'])}" for key, m in by_budget.items())
            lines.append(f"  NFE to match each budget ({targets}), as a multiple of its NFE ('>=': not reached up to the largest budget tried):")
            for label in next(iter(by_budget.values()))["methods"]:
                ratios = [m["methods"][label] for m in by_budget.values()]
                lines.append(f"    {label}: " + ", ".join(f"{'' if c['reached'] else '>='}{_fmt(c['nfe_ratio'])}x" for c in ratios))
        for label, c in checks.get("grad_error_drop", {}).items():
            lines.append(f"  grad V error of {label} falls {_fmt(c)}x from the smallest to the largest N")
        for label, c in checks.get("reference_over_floor", {}).items():
            lines.append(f"  {label}: {head} / floor = {_fmt(c)}")
    if summary.get("plots"):
        lines += ["", "plots: " + ", ".join(summary["plots"])]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------- stage
def steer_stage(ctx: Any) -> dict[str, Any]:
    """Run every ``[[steer.methods]]`` at every budget; measure against the exact tilted law.

    Writes one ``metrics.jsonl`` record per run (and per diagnostic point), the PNG plots (when
    ``steer.plots``) into the run directory and the printed table into ``ctx.tables["steer"]``;
    calls the ``mfm_evaluation_results`` hook with ``stage="steer"``.

    Returns:
        The summary: ``reward``, ``reward_terms`` (label -> weight), ``samples``,
        ``headline_metric``; ``floor`` (metric -> exact vs exact) and ``floor_record``;
        ``tilted`` (the exact mode weights and mean reward); ``runs`` (one record per method and
        budget: ``label``, ``steps``, ``particles``, ``distances``, ``excess``, ``mode_tv``,
        ``mean_reward``, ``reward_terms``, ``cost`` (per sample, ``wall_s`` in total), ``flags``,
        ``notes``); ``diagnostics`` (or None); ``checks``; ``plots``; ``seconds``.

    Raises:
        MfmUserError: the data source has no exact tilts, or the reward no closed form.
    """
    from tqdm.auto import tqdm

    began = time.time()
    cfg, data = ctx.spec.steer, ctx.data
    if not isinstance(data, TiltableData):
        raise MfmUserError(
            f"steer: data source {getattr(data, 'name', type(data).__name__)!r} cannot give the exact tilted law "
            "(it is not TiltableData); steering is evaluated against exact samples of p_1 exp(r) / Z"
        )
    model = _model(ctx)
    param = next(model.parameters())
    device, dtype = param.device, param.dtype
    reward = build_reward(cfg)
    form = reward.closed_form()
    if form is None:
        raise MfmUserError("steer: the reward has no closed form (Reward.closed_form() is None), so the exact tilted law is unknown")
    law = data.tilted(form)
    metrics = _metrics(cfg)
    labels = steer_method_labels(cfg)
    n, head = cfg.samples, cfg.headline

    ref_gen = ctx.generator(_REFERENCE, device="cpu")
    reference = law.sample(n, generator=ref_gen).x_1.to(device=device, dtype=dtype)
    metric_seed = _seeds(ctx.generator(_METRIC, device="cpu"), 1)[0]
    floor_sets = [law.sample(n, generator=ref_gen).x_1.to(device=device, dtype=dtype) for _ in range(cfg.floor_repeats)]
    floors = [_compare(metrics, x, reference, metric_seed) for x in floor_sets]
    floor = {key: _mean([f[key] for f in floors]) for key, _ in metrics}
    floor_spread = {
        key: _num(torch.tensor([f[key] for f in floors], dtype=torch.float64).std()) if len(floors) > 1 else None
        for key, _ in metrics
    }
    floor_set = floor_sets[0]
    mixture = _mixture(law)
    with torch.no_grad():
        floor_reward, floor_terms = _reward_means(reward, floor_set)
    floor_record = {
        "mode_tv": _num(_total_variation(_mode_weights(mixture, floor_set), mixture[2])) if mixture else None,
        "mean_reward": floor_reward,
        "reward_terms": floor_terms,
    }
    ctx.log({
        "stage": "steer", "part": "floor", **{k: _num(v) for k, v in floor.items()},
        "spread": floor_spread, "repeats": cfg.floor_repeats, **floor_record,
    })

    start_gen = ctx.generator(_START, device=device)
    noise = torch.randn((n, *model.data_shape), generator=start_gen, device=device, dtype=dtype)
    budgets = [
        (method, label, k, p, d)
        for method, label in zip(cfg.methods, labels)
        for k in method.steps
        for p in (method.particles or [None])
        for d in (method.draws or [None])
    ]
    runs: list[MethodRun] = []
    excess: dict[str, float] = {}
    shown: dict[str, Tensor] = {}
    bar = tqdm(budgets, desc="steer", disable=None, leave=False)
    plain = bar.disable
    for i, (method, label, k, p, d) in enumerate(bar):
        if method.baseline is None and p is None and method.estimator is not None and _has_particles(method.estimator.options):
            p = method.estimator.options.particles  # the estimator's own
        if method.baseline == "mfm-search" and p is None:
            p = 1
        run_key = f"{label}/K={k}" + (f"/N={p}" if p is not None else "") + (f"/draws={d}" if d is not None else "")
        if not plain:
            bar.set_postfix_str(run_key, refresh=True)
        gen = torch.Generator(device=device).manual_seed(_seed_of(ctx.spec.run.seed + _RUNS, run_key))
        samples, cost, flags = _run_method(
            model=model, reward=reward, data=data, method=method, steps=k, particles=p, draws=d, noise=noise,
            generator=gen, batch_size=cfg.batch_size,
        )
        distances = _compare(metrics, samples, reference, metric_seed)
        with torch.no_grad():
            mean_r, terms = _reward_means(reward, samples)
        tv = _num(_total_variation(_mode_weights(mixture, samples), mixture[2])) if mixture else None
        excess[run_key] = distances[head] - floor[head]
        notes = [note for note, on in (("clamped", flags.get("clamped")), ("renormalized", flags.get("renormalized")), ("sde", flags.get("sde"))) if on]
        nonfinite = int((~torch.isfinite(samples.reshape(n, -1)).all(1)).sum())
        if nonfinite:
            notes.append(f"{nonfinite}-nonfinite")
        record = {
            "run": run_key,
            "label": label,
            "method": method.baseline or "steered",
            "estimator": method.estimator.name if method.estimator is not None else None,
            "steps": k,
            "particles": p,
            "draws": d,
            "distances": {key: _num(v) for key, v in distances.items()},
            "excess": _num(excess[run_key]),
            "floor": _num(floor[head]),
            "mode_tv": tv,
            "mean_reward": mean_r,
            "reward_terms": terms,
            "cost": {key: (_num(v) if isinstance(v, float) else v) for key, v in cost.to_dict().items()},
            "flags": flags,
            "notes": notes,
        }
        ctx.log({"stage": "steer", "part": "method", **record})
        if plain:
            print(f"mfm: steer {i + 1}/{len(budgets)} {run_key}: {head} excess {_fmt(excess[run_key])}, "
                  f"NFE {_fmt(cost.nfe)}, {cost.wall_s:.1f} s", file=sys.stderr)
        runs.append(MethodRun(label=label, steps=k, particles=p, record=record))
        shown[label] = samples  # the last (largest) budget of each method
    bar.close()

    summary: dict[str, Any] = {
        "reward": " + ".join(f"{w:g} * {lab}" for lab, (w, _) in zip(reward.labels, reward.terms)),
        "reward_terms": {lab: w for lab, (w, _) in zip(reward.labels, reward.terms)},
        "samples": n,
        "headline_metric": head,
        "floor": {k: _num(v) for k, v in floor.items()},
        "floor_spread": floor_spread,
        "floor_repeats": cfg.floor_repeats,
        "floor_record": floor_record,
        "tilted": {
            "mode_weights": [_num(w) for w in mixture[2]] if mixture else None,
            "mean_reward": floor_reward,
        },
        "runs": [r.record for r in runs],
    }
    summary["diagnostics"] = _diagnostics(ctx, model, reward) if cfg.diagnostics is not None else None
    summary["checks"] = _checks(cfg, labels, runs, excess, summary["diagnostics"])
    plotted = {label: x for label, x in list(shown.items())[: cfg.plot_methods]}
    summary["plots"] = _write_plots(ctx, summary, plotted, reference, law, model) if cfg.plots else []
    summary["seconds"] = round(time.time() - began, 2)
    ctx.tables["steer"] = format_steering(summary)
    ctx.plugins.hook.mfm_evaluation_results(run=ctx, stage="steer", results=summary)
    return summary
