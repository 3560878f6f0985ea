"""The finetune stage: off-policy reward fine-tuning of the base drift (MATH.md section 7).

Generic over the reward, the data source, the integrator and the metrics: every component comes
from the ``[finetune]`` section of the spec; the core names none of them.

**What is trained.** A copy ``b_theta`` of the base drift ``b_t(x) = v_{t,t}(x; 0, 0)``: the tuned
model starts as a copy of the whole (frozen) meta flow map's network, and only its drift (the
``t = 0`` slice) is trained and used. It should become the steered drift
``b + g_t grad V_t`` of ``p_r = p_1 exp(r) / Z``, so that the plain, unsteered ODE of the tuned
drift samples ``p_r``. Each objective of ``finetune.objectives`` trains its own copy from the same
start, on the same data stream, for the same number of steps.

**States are off-policy**: ``t`` from ``finetune.t_distribution`` on ``[t_min, 1)``,
``x = alpha_t z + beta_t x_1`` with ``x_1`` from the data source, never from the model being tuned.

**Objective "mfm-ft"** (:func:`mfm_ft_target`): ``N = draws`` posterior draws
``xh_i = X_{0,1}(eps_i; t, x)`` of the *frozen* meta flow map,
``R = mean_i exp(r(xh_i) - c)``, ``G = grad_x R`` (back-propagated through the frozen map and the
reward with respect to ``x`` only: ``torch.autograd.grad``, so no parameter receives a gradient),
``b`` the frozen base drift and ``g_t`` the steering coefficient (clamped at ``g_max``):

    target = b - (R - 1)(b_theta - b) + g_t G        (all detached)
    loss   = mean_batch |b_theta(x) - target|^2

whose expected gradient ``R (b_theta - b) - g_t G`` vanishes where ``E[R](b_theta - b) = g_t grad E[R]``,
i.e. at ``b_theta = b + g_t grad V_t``. The means over ``N`` draws are unbiased for ``E[R]`` and
``grad E[R]``, and the target is linear in them, so the fixed point is the same for every ``N``.

**The estimate of G.** By default (MATH.md) ``G`` is pathwise at every ``t``. Below
``covariance_until`` it is instead the covariance estimate of the same draws,
``(beta_t / alpha_t^2) sum_i R_i (xh_i - mean_j xh_j) / (N - 1)``, also unbiased for
``grad E[R]`` (``grad_x E[R | x_t = x] = (beta_t / alpha_t^2) Cov(x_1, R | x)``). It uses the
distribution of the draws but not the derivative of the map in ``x``, which is poorly determined
at small ``t`` (the posterior barely depends on ``x`` there) and which ``g_t ~ 1/t`` amplifies;
above the switch, where ``beta_t / alpha_t^2`` blows up, the pathwise gradient is the better one.

**The baseline c.** Shifting ``r`` by a constant rescales ``R`` and ``G`` together and leaves the
fixed point unchanged, but the size of the steps scales with ``R``. With ``baseline =
"running"``, ``c`` is a running mean (decay ``baseline_decay``) of ``log mean exp r(xh)`` over the
draws of each previous batch (the first batch uses its own), so the typical ``R`` is about 1;
``c`` is saved in checkpoints. With ``"none"``, ``c = 0``.

**Objective "reward-weighted"** (:func:`reward_weighted_loss`), the baseline: reward-weighted flow
matching on the same data pairs, self-normalised weights ``w = softmax(r(x_1))`` within the batch:
``loss = sum_b w_b |b_theta(x_t) - (dalpha_t x_0 + dbeta_t x_1)|^2``. Consistent as the batch grows
(``p_r / p_1 ~ exp r``), no frozen meta flow map needed, but its effective sample size is that of
the weights.

**Evaluation.** Every model (the base, i.e. the frozen drift, and each tuned EMA model) is
sampled with the plain ODE (``ode_integrator``, ``ode_steps`` uniform steps from noise at 0 to 1),
all from the same noise. When the data source can tilt (``TiltableData``) and the reward has a
closed form, the samples are compared by every metric with exact samples of ``p_r`` (the noise
floor: an independent exact set of the same size); the *gap closed* is
``1 - (d_tuned - floor) / (d_base - floor)`` on the headline metric. Always: the mean reward, and
the headline distance to the data law ``p_1`` (the exact ``p_r``'s own distance to ``p_1`` is given
too: tuned models far beyond it are over-optimised), and the mode-weight error when ``p_r`` is a
mixture. During training, a quick evaluation of the EMA model every ``eval_every`` steps
(``eval_samples`` samples, headline metric and mean reward) gives the curves in ``metrics.jsonl``
(``"part": "curve"``) and ``finetune_curves.png``.

Random streams are fixed offsets of ``run.seed`` (:data:`FINETUNE_STREAM`); every objective draws
from the same data and loss streams, and the evaluation draws never touch the training streams,
so a run is deterministic on CPU and resumes bit-identically (checkpoints per objective in
``checkpoints/finetune-<objective>/``).
"""

from __future__ import annotations

import copy
import math
import sys
import time
from typing import Any

import attrs
import torch
from torch import Tensor

from mfm_framework.engine.evaluate import FLOOR, _compare, _fmt, _grid, _num, _seeds
from mfm_framework.engine.train import OptimizationLoop
from mfm_framework.errors import MfmUserError
from mfm_framework.grids import uniform_grid
from mfm_framework.interfaces import SamplableData, TiltableData
from mfm_framework.interfaces._time import pad_time
from mfm_framework.rewards import WeightedReward
from mfm_framework.sampling import ode_sample

__all__ = [
    "finetune_stage",
    "format_finetune",
    "mfm_ft_target",
    "reward_weighted_loss",
    "sample_finetune_times",
    "FinetuneTarget",
    "FINETUNE_STREAM",
    "OBJECTIVES",
]

#: Offset of ``run.seed`` of the finetune stage's random streams (train 1-3, evaluate 10-16, steer 20-25).
FINETUNE_STREAM = 30
_DATA, _LOSS, _REFERENCE, _NOISE, _METRIC, _QUICK = range(FINETUNE_STREAM, FINETUNE_STREAM + 6)

#: The objectives, in the order of the summary's checks.
OBJECTIVES = ("mfm-ft", "reward-weighted")
BASE = "base"


# ------------------------------------------------------------------------------ the objectives
def sample_finetune_times(
    n: int, *, t_min: float, distribution: str = "uniform", gamma: float = 1.0, generator: torch.Generator | None, like: Tensor
) -> Tensor:
    """Times on ``[t_min, 1)``: ``"uniform"``, or ``"power"``: ``t_min + (1 - t_min) U^gamma``. ``[n]``."""
    u = torch.rand(n, generator=generator, device=like.device, dtype=like.dtype)
    if distribution == "power":
        u = u.pow(gamma)
    elif distribution != "uniform":
        raise ValueError(f"unknown time distribution {distribution!r} (uniform or power)")
    return t_min + (1 - t_min) * u


@attrs.frozen(kw_only=True)
class FinetuneTarget:
    """The MFM-FT regression target at a batch of states and its parts (all detached).

    Attributes:
        target: ``b - (R - 1)(b_theta - b) + g_t G``, ``[B, *D]``.
        base: the frozen base drift ``b``, ``[B, *D]``.
        weight: ``R``, the mean over the draws of ``exp(r(xh) - c)``, ``[B]``.
        grad: ``G = grad_x R``, ``[B, *D]``.
        g: the steering coefficient ``g_t`` (clamped), ``[B]``.
        rewards: ``r(xh)`` of every draw, ``[B, N]``.
        log_mean_exp: ``log mean exp r(xh)`` over all the draws (the baseline's update).
    """

    target: Tensor
    base: Tensor
    weight: Tensor
    grad: Tensor
    g: Tensor
    rewards: Tensor
    log_mean_exp: float


def mfm_ft_target(
    *,
    frozen: Any,
    reward: Any,
    t: Tensor,
    x: Tensor,
    tuned_drift: Tensor,
    draws: int = 1,
    posterior_steps: int = 1,
    baseline: float | None = 0.0,
    g_max: float | None = None,
    generator: torch.Generator | None = None,
    eps: Tensor | None = None,
    covariance_until: float = 0.0,
) -> FinetuneTarget:
    """The MFM-FT target ``b - (R - 1)(b_theta - b) + g_t G`` (MATH.md section 7), detached.

    Args:
        frozen: the frozen meta flow map (posterior draws, base drift, interpolant). Its
            parameters never receive a gradient (``G`` is taken with ``torch.autograd.grad``
            with respect to ``x`` only), whether or not they require one.
        reward: ``r(x_1)``, ``[B N, *D] -> [B N]``, differentiable.
        t: times ``[B]``, in ``(0, 1)`` (``g_t`` is infinite at 0 unless clamped).
        x: states ``[B, *D]``.
        tuned_drift: ``b_theta(x)``, ``[B, *D]`` (detached here).
        draws: posterior draws ``N`` per state; ``R`` and ``G`` are their means.
        posterior_steps: inner steps of each draw.
        baseline: ``c`` in ``R = exp(r - c)``; ``None``: this batch's ``log mean exp r``.
        g_max: clamp of ``g_t``.
        generator: for the draws' noise.
        eps: the draws' noise ``[B, N, *D]`` instead.
        covariance_until: where ``t < covariance_until``, ``G`` is the covariance estimate
            ``(beta_t / alpha_t^2) sum_i R_i (xh_i - mean_j xh_j) / (N - 1)`` of the same draws,
            unbiased for ``grad E[R]`` by ``grad_x E[R | x_t = x] = (beta_t / alpha_t^2)
            Cov(x_1, R | x)`` (needs ``N >= 2``; no derivative of the map or the reward), instead
            of the pathwise gradient. 0 (the default): pathwise everywhere, as in MATH.md.

    Returns:
        :class:`FinetuneTarget`. Cost: ``B N K`` MFM rows forward and backward (no backward
        when every ``t`` is below ``covariance_until``), ``B N`` reward calls forward and
        backward, ``B`` base rows forward.
    """
    batch, shape = x.shape[0], x.shape[1:]
    with torch.no_grad():
        base = frozen.drift(t=t, x=x)
    with torch.enable_grad():
        x_in = x.detach().requires_grad_(True)
        xh = frozen.sample_posterior(t=t, x=x_in, n=draws, steps=posterior_steps, generator=generator, eps=eps)
        r = reward(xh.reshape(batch * draws, *shape)).reshape(batch, draws)
        lme = float(torch.logsumexp(r.detach().reshape(-1), 0)) - math.log(batch * draws)
        c = lme if baseline is None else baseline
        each = torch.exp(r - c)
        weight = each.mean(1)
        if covariance_until <= 0 or bool((t >= covariance_until).any()):
            (grad,) = torch.autograd.grad(weight.sum(), x_in)
        else:
            grad = torch.zeros_like(x)
    weight, grad = weight.detach(), grad.detach()
    interp = frozen.interpolant
    if covariance_until > 0:
        if draws < 2:
            raise ValueError(f"the covariance estimate of G needs draws >= 2, got {draws}")
        xs, each = xh.detach(), each.detach().reshape(batch, draws, *([1] * len(shape)))
        cov = (each * (xs - xs.mean(1, keepdim=True))).sum(1) / (draws - 1)
        below = t < covariance_until
        snr_weight = torch.where(below, interp.beta(t) / interp.alpha(t).square(), torch.zeros_like(t))
        grad = torch.where(below.reshape(batch, *([1] * len(shape))), pad_time(snr_weight, x) * cov, grad)
    g = interp.steering_coefficient(t, max=g_max)
    target = base - pad_time(weight - 1, x) * (tuned_drift.detach() - base) + pad_time(g, x) * grad
    return FinetuneTarget(target=target, base=base, weight=weight, grad=grad, g=g, rewards=r.detach(), log_mean_exp=lme)


def reward_weighted_loss(*, tuned: Any, reward: Any, x_1: Tensor, z: Tensor, t: Tensor) -> tuple[Tensor, dict[str, float]]:
    """Reward-weighted flow matching: ``sum_b w_b |b_theta(x_t) - (dalpha_t z + dbeta_t x_1)|^2``.

    ``w = softmax(r(x_1))`` over the batch (self-normalised importance weights of ``p_r / p_1``),
    ``x_t = alpha_t z + beta_t x_1``. Returns the loss and ``{"ess": effective sample size / B,
    "mean_reward": mean r(x_1)}``. Cost: ``B`` reward calls, ``B`` tuned rows forward and backward.
    """
    interp = tuned.interpolant
    with torch.no_grad():
        r = reward(x_1)
        w = torch.softmax(r.reshape(-1), 0)
    x_t = interp.interpolate(x_0=z, x_1=x_1, t=t)
    velocity = interp.velocity_target(x_0=z, x_1=x_1, t=t)
    sq = (tuned.drift(t=t, x=x_t) - velocity).reshape(x_1.shape[0], -1).square().sum(1)
    ess = float(1.0 / w.square().sum()) / x_1.shape[0]
    return (w * sq).sum(), {"ess": ess, "mean_reward": float(r.mean())}


# ------------------------------------------------------------------------------------ helpers
def build_reward(cfg: Any) -> WeightedReward:
    """The weighted sum of the ``[[finetune.rewards]]`` terms, every weight times ``finetune.scale``."""
    return WeightedReward([(cfg.scale * term.weight, term.reward.build(), term.label) for term in cfg.rewards])


def _frozen_model(ctx: Any) -> tuple[Any, dict[str, Any]]:
    """The frozen meta flow map (``finetune.model`` or the run's trained model) and its ``[model]`` table."""
    cfg = ctx.spec.finetune
    if cfg.model is not None:
        from mfm_framework.checkpoint import MODEL_FORMAT, load_flow_map, load_payload

        table = load_payload(cfg.model, expected_format=MODEL_FORMAT, map_location="cpu")["model"]
        model = load_flow_map(cfg.model, device=ctx.device, registry=ctx.plugins.registry)
    elif ctx.model is not None:
        model, table = ctx.model, ctx.resolved["model"]
    else:
        raise MfmUserError("finetune: no model: give finetune.model (a model.pt) or add a [train] section")
    return model.to(ctx.device, ctx.dtype).eval().requires_grad_(False), table


def _metrics(cfg: Any) -> list[tuple[str, Any]]:
    out: list[tuple[str, Any]] = []
    seen: dict[str, int] = {}
    for spec in cfg.metrics:
        seen[spec.name] = seen.get(spec.name, 0) + 1
        out.append((spec.name if seen[spec.name] == 1 else f"{spec.name}-{seen[spec.name]}", spec.build()))
    return out


class _Judge:
    """Sampling and measuring a model: the plain ODE from fixed noise, distances to fixed exact sets."""

    def __init__(self, ctx: Any, *, n: int, metrics: list[tuple[str, Any]], law: Any, reward: WeightedReward, stream: int, like: Tensor) -> None:
        cfg = ctx.spec.finetune
        self.ctx, self.n, self.metrics, self.law, self.reward = ctx, n, metrics, law, reward
        self.device, self.dtype = like.device, like.dtype
        self.integrator = cfg.ode_integrator.build()
        self.times = uniform_grid(0.0, 1.0, cfg.ode_steps, dtype=self.dtype, device=self.device)
        self.noise_seed = _seeds(ctx.generator(stream + 100, device="cpu"), 1)[0]
        self.metric_seed = _seeds(ctx.generator(stream + 200, device="cpu"), 1)[0]
        gen = ctx.generator(stream, device="cpu")
        data = ctx.data
        draw = lambda source: source.sample(n, generator=gen).x_1.to(device=self.device, dtype=self.dtype)  # noqa: E731
        self.data_ref = draw(data) if isinstance(data, SamplableData) else None
        self.data_floor = draw(data) if isinstance(data, SamplableData) else None
        self.reference = draw(law) if law is not None else None
        self.floor_set = draw(law) if law is not None else None

    def sample(self, model: Any) -> Tensor:
        gen = torch.Generator(device=self.device).manual_seed(self.noise_seed)
        with torch.no_grad():
            return ode_sample(model, n=self.n, integrator=self.integrator, times=self.times, generator=gen).x

    def measure(self, x: Tensor, *, only: str | None = None) -> dict[str, Any]:
        """Distances to the tilted law (every metric, or ``only``), headline distance to ``p_1``, mean reward."""
        metrics = [(k, m) for k, m in self.metrics if only is None or k == only]
        out: dict[str, Any] = {}
        if self.reference is not None:
            out["distances"] = _compare(metrics, x, self.reference, self.metric_seed)
        if self.data_ref is not None:
            head = metrics[0]
            out["to_base"] = _compare([head], x, self.data_ref, self.metric_seed)[head[0]]
        with torch.no_grad():
            total, terms = self.reward.evaluate(x)
        finite = torch.isfinite(total)
        out["mean_reward"] = float(total[finite].double().mean()) if bool(finite.any()) else float("nan")
        out["reward_terms"] = {k: float(v[finite].double().mean()) for k, v in terms.items()} if bool(finite.any()) else {}
        out["nonfinite"] = int((~torch.isfinite(x.reshape(x.shape[0], -1)).all(1)).sum())
        return out


# ---------------------------------------------------------------------------- one objective
def _train_objective(
    ctx: Any, *, objective: str, frozen: Any, table: dict[str, Any], reward: WeightedReward, quick: _Judge, quick_base: dict[str, Any]
) -> tuple[Any, dict[str, Any]]:
    """Fine-tune one copy of the frozen drift with ``objective``; returns the EMA model and its record.

    Every step calls the ``mfm_train_step_end`` hook (steps count from 1 for each objective; the
    metrics of ``"mfm-ft"`` hold ``mean_R``, of ``"reward-weighted"`` ``ess``)."""
    cfg, data = ctx.spec.finetune, ctx.data
    head = cfg.headline
    tuned = copy.deepcopy(frozen).requires_grad_(True)
    tuned.ledger = None
    interp = frozen.interpolant
    data_gen, loss_gen = ctx.generator(_DATA, device="cpu"), ctx.generator(_LOSS)
    loop = OptimizationLoop(
        ctx, model=tuned, cfg=cfg, directory=ctx.run_dir / "checkpoints" / f"finetune-{objective}",
        generators={"data": data_gen, "loss": loss_gen}, desc=f"finetune {objective}",
        record={"stage": "finetune", "objective": objective}, section="finetune",
    )
    state: dict[str, Any] = {"baseline": None if cfg.baseline == "running" else 0.0, "curve": []}
    loop.extra_state = lambda: {"baseline": state["baseline"], "curve": list(state["curve"])}
    extra = loop.resume()
    if extra is not None:
        state["baseline"], state["curve"] = extra["baseline"], list(extra["curve"])
    batches = data.batches(batch_size=cfg.batch_size, generator=data_gen)

    def quick_eval(step: int) -> None:
        # step 0: the EMA is still the frozen model, measured once for every objective
        m = quick.measure(quick.sample(loop.ema.module), only=head) if step > 0 else quick_base["measure"]
        record: dict[str, Any] = {"step": step, "mean_reward": _num(m["mean_reward"]), "to_base": _num(m.get("to_base", math.nan))}
        if "distances" in m:
            d = m["distances"][head]
            record[head] = _num(d)
            record["excess"] = _num(d - quick_base["floor"])
            record["gap_closed"] = _gap(d, quick_base["distance"], quick_base["floor"])
        state["curve"].append(record)
        ctx.log({"stage": "finetune", "part": "curve", "objective": objective, **record})

    def after_step(step: int) -> None:
        if (cfg.eval_every and step % cfg.eval_every == 0) or step == cfg.steps:
            quick_eval(step)

    def step_fn(step: int) -> tuple[Tensor, dict[str, float]]:
        x_1 = next(batches).x_1.to(ctx.device, ctx.dtype)
        t = sample_finetune_times(
            x_1.shape[0], t_min=cfg.t_min, distribution=cfg.t_distribution, gamma=cfg.t_gamma, generator=loss_gen, like=x_1
        )
        z = torch.randn(x_1.shape, generator=loss_gen, device=x_1.device, dtype=x_1.dtype)
        if objective == "reward-weighted":
            return reward_weighted_loss(tuned=tuned, reward=reward, x_1=x_1, z=z, t=t)
        x = interp.interpolate(x_0=z, x_1=x_1, t=t)
        pred = tuned.drift(t=t, x=x)
        parts = mfm_ft_target(
            frozen=frozen, reward=reward, t=t, x=x, tuned_drift=pred, draws=cfg.draws, posterior_steps=cfg.posterior_steps,
            baseline=state["baseline"], g_max=cfg.g_max, generator=loss_gen, covariance_until=cfg.covariance_until,
        )
        if cfg.baseline == "running":
            previous = state["baseline"]
            state["baseline"] = parts.log_mean_exp if previous is None else (
                cfg.baseline_decay * previous + (1 - cfg.baseline_decay) * parts.log_mean_exp
            )
        loss = (pred - parts.target).reshape(x.shape[0], -1).square().sum(1).mean()
        return loss, {
            "mean_R": float(parts.weight.mean()),
            "max_R": float(parts.weight.max()),
            "baseline": float(state["baseline"] or 0.0),
            "mean_reward": float(parts.rewards.mean()),
        }

    if not state["curve"]:
        quick_eval(0)
    elif ((cfg.eval_every and loop.start % cfg.eval_every == 0) or loop.start == cfg.steps) and state["curve"][-1]["step"] != loop.start:
        quick_eval(loop.start)  # interrupted between the step and its evaluation
    elapsed = loop.run(step_fn, after_step=after_step)
    ema_model = loop.ema.module.eval().requires_grad_(False)
    from mfm_framework.checkpoint import save_flow_map

    name = f"finetune-{objective}.pt"
    save_flow_map(ctx.run_dir / name, model=ema_model, model_table=table, step=cfg.steps)
    return ema_model, {"model_file": name, "final_loss": _num(loop.last_loss), "seconds": round(elapsed, 2), "curve": state["curve"]}


def _gap(d: float, d_base: float, floor: float) -> float | None:
    """``1 - (d - floor) / (d_base - floor)``, or None when the base is not above the floor."""
    if not all(math.isfinite(v) for v in (d, d_base, floor)) or d_base <= floor:
        return None
    return _num(1 - (d - floor) / (d_base - floor))


# ---------------------------------------------------------------------------------- plotting
def _write_plots(ctx: Any, summary: dict[str, Any], shown: dict[str, Tensor], law: Any, frozen: Any) -> list[str]:
    from mfm_framework.engine import plots
    from mfm_framework.engine.steer import _density_grid

    head = summary["headline_metric"]
    written: list[str] = []
    curves = {obj: rec["curve"] for obj, rec in summary["tuned"].items()}
    quick = summary["quick"]
    panels: list[Any] = []
    if summary["exact"]:
        panels.append((
            f"{head} to the exact tilted law ({quick['samples']} samples)",
            {obj: ([p["step"] for p in c], [p[head] for p in c]) for obj, c in curves.items()},
            {"untuned": quick["base"], "noise floor": quick["floor"]},
        ))
    panels.append((
        "mean reward",
        {obj: ([p["step"] for p in c], [p["mean_reward"] for p in c]) for obj, c in curves.items()},
        {"exact tilted": summary["tilted"]["mean_reward"], "untuned": summary["base"]["mean_reward"]},
    ))
    if summary["base"].get("to_base") is not None:
        panels.append((
            f"{head} to the data law p_1",
            {obj: ([p["step"] for p in c], [p["to_base"] for p in c]) for obj, c in curves.items()},
            {"exact tilted": summary["tilted"].get("to_base"), "untuned": summary["base"].get("to_base")},
        ))
    written.append(plots.curves_plot(
        ctx.run_dir / "finetune_curves.png", panels, log_y=[summary["exact"]],
        title=f"fine-tuning toward p_1 exp(r) / Z, reward {summary['reward']} (EMA models, plain ODE)",
    ))
    if shown:
        reference = shown.pop("exact tilted", None)
        sets = ({"exact tilted": reference} if reference is not None else {}) | shown
        contour = _density_grid(law, frozen, reference) if reference is not None else None
        written.append(plots.samples_over_density_plot(ctx.run_dir / "finetune_samples.png", sets, contour=contour))
    return written


# ------------------------------------------------------------------------------------- table
def format_finetune(summary: dict[str, Any]) -> str:
    """The finetune stage's results as a fixed-width table (what ``mfm run`` prints)."""
    head = summary["headline_metric"]
    keys = list(summary["floor"]) if summary["exact"] else []
    lines = [
        f"finetune: reward {summary['reward']}; {summary['samples']} samples of the plain ODE "
        f"({summary['ode_integrator']}, {summary['ode_steps']} steps) of each model"
        + (f" vs as many exact draws of the tilted law ({FLOOR}: exact vs exact)" if summary["exact"] else "")
        + f"; {summary['steps']} steps per objective"
    ]
    rows: list[list[Any]] = []
    models = [("base (untuned)", summary["base"])] + list(summary["tuned"].items())
    for label, rec in models:
        rows.append([
            label, *(rec["distances"][k] for k in keys),
            *([rec["excess"], rec["gap_closed"]] if summary["exact"] else []),
            rec["mean_reward"], rec.get("to_base"), rec.get("mode_tv"), rec.get("seconds", "-"),
        ])
    tilted = summary["tilted"]
    if summary["exact"]:
        rows.append([
            f"{FLOOR} (exact tilted)", *(summary["floor"][k] for k in keys), 0.0, 1.0,
            tilted["mean_reward"], tilted.get("to_base"), tilted.get("mode_tv"), "-",
        ])
    headers = ["model", *keys, *([f"{head} excess", "gap closed"] if summary["exact"] else []),
               "mean r", f"{head} to p_1", "mode TV", "train s"]
    lines += _grid(headers, rows, rules=[1, len(models)] if summary["exact"] else [1])
    if summary.get("data_floor") is not None:
        lines.append(f"  ({head} to p_1: the data law's own noise floor is {_fmt(summary['data_floor'])})")
    checks = summary.get("checks", {})
    if checks.get("gap_closed"):
        lines += ["", f"finetune: fraction of the base-to-target gap closed ({head} minus the floor)"]
        for obj, v in checks["gap_closed"].items():
            lines.append(f"  {obj}: {_fmt(v)}")
        if "mfm_ft_vs_reward_weighted" in checks:
            a, b = checks["mfm_ft_vs_reward_weighted"]
            lines.append(f"  mfm-ft {_fmt(a)} vs reward-weighted {_fmt(b)} at the same {summary['steps']} steps")
    if summary.get("plots"):
        lines += ["", "plots: " + ", ".join(summary["plots"])]
    return "\n".join(lines)


# -------------------------------------------------------------------------------------- stage
def finetune_stage(ctx: Any) -> dict[str, Any]:
    """Fine-tune the base drift with every objective; evaluate each tuned model against the exact tilt.

    Writes ``finetune-<objective>.pt`` (EMA weights, loadable with
    :func:`~mfm_framework.checkpoint.load_flow_map`; sample with the plain ODE of its drift),
    ``metrics.jsonl`` records (training windows, ``"part": "curve"`` quick evaluations, one
    ``"part": "result"`` per model), the PNG plots and ``ctx.tables["finetune"]``; calls the
    ``mfm_evaluation_results`` hook with ``stage="finetune"``.

    Returns:
        The summary: ``reward``, ``objectives``, ``steps``, ``samples``, ``headline_metric``,
        ``exact`` (whether the tilted law is known), ``floor`` (metric -> exact vs exact),
        ``base`` and ``tuned`` (objective ->) records (``distances``, ``excess``, ``gap_closed``,
        ``mean_reward``, ``to_base``, ``mode_tv``; tuned: ``model_file``, ``final_loss``, ``seconds``,
        ``curve``), ``tilted`` (mean reward, distance to ``p_1`` and mode weights of the exact
        law), ``quick`` (the curves' base and floor), ``checks`` (``gap_closed`` per objective,
        ``mfm_ft_vs_reward_weighted``), ``plots``, ``seconds``.
    """
    began = time.time()
    cfg, data = ctx.spec.finetune, ctx.data
    if not isinstance(data, SamplableData):
        raise MfmUserError(f"finetune: data source {getattr(data, 'name', type(data).__name__)!r} cannot draw samples")
    frozen, table = _frozen_model(ctx)
    param = next(frozen.parameters())
    reward = build_reward(cfg)
    if "mfm-ft" in cfg.objectives and not reward.is_differentiable and cfg.covariance_until < 1:
        raise MfmUserError("finetune: objective 'mfm-ft' needs a differentiable reward (or covariance_until = 1)")
    metrics = _metrics(cfg)
    head = cfg.headline
    if head not in {k for k, _ in metrics}:
        raise MfmUserError(f"finetune.headline {head!r} is not one of the metrics {[k for k, _ in metrics]}")
    head_metrics = [(k, m) for k, m in metrics if k == head] + [(k, m) for k, m in metrics if k != head]

    form = reward.closed_form() if isinstance(data, TiltableData) else None
    law = data.tilted(form) if form is not None else None
    if law is None:
        why = "the data source cannot tilt" if not isinstance(data, TiltableData) else "the reward has no closed form"
        print(f"mfm: finetune: no exact tilted law ({why}): reporting rewards and distances to p_1 only", file=sys.stderr)

    final = _Judge(ctx, n=cfg.samples, metrics=head_metrics, law=law, reward=reward, stream=_REFERENCE, like=param)
    quick = _Judge(ctx, n=cfg.eval_samples, metrics=head_metrics, law=law, reward=reward, stream=_QUICK, like=param)
    quick_floor = _compare(head_metrics[:1], quick.floor_set, quick.reference, quick.metric_seed)[head] if law is not None else math.nan
    base_quick = quick.measure(quick.sample(frozen), only=head)
    quick_base = {"distance": base_quick["distances"][head] if law is not None else math.nan, "floor": quick_floor, "measure": base_quick}

    mixture = None
    if law is not None:
        from mfm_framework.engine.steer import _mixture

        mixture = _mixture(law)

    def mode_tv(x: Tensor) -> float | None:
        if mixture is None:
            return None
        from mfm_framework.engine.steer import _mode_weights, _total_variation

        return _num(_total_variation(_mode_weights(mixture, x), mixture[2]))

    def result(label: str, x: Tensor, floor: dict[str, float] | None, base_d: float | None) -> dict[str, Any]:
        m = final.measure(x)
        rec: dict[str, Any] = {
            "mean_reward": _num(m["mean_reward"]),
            "reward_terms": {k: _num(v) for k, v in m["reward_terms"].items()},
            "to_base": _num(m["to_base"]) if "to_base" in m else None,
            "nonfinite": m["nonfinite"],
        }
        if floor is not None:
            d = m["distances"]
            rec["distances"] = {k: _num(v) for k, v in d.items()}
            rec["excess"] = _num(d[head] - floor[head])
            rec["gap_closed"] = _gap(d[head], base_d, floor[head]) if base_d is not None else None
            rec["mode_tv"] = mode_tv(x)
        return rec

    floor = _compare(head_metrics, final.floor_set, final.reference, final.metric_seed) if law is not None else None
    base_x = final.sample(frozen)
    base = result(BASE, base_x, floor, None)
    if floor is not None:
        base["gap_closed"] = 0.0
    ctx.log({"stage": "finetune", "part": "result", "model": BASE, **base})
    shown: dict[str, Tensor] = {}
    if law is not None:
        shown["exact tilted"] = final.reference
    shown["base (untuned)"] = base_x

    tuned: dict[str, Any] = {}
    for objective in cfg.objectives:
        model, record = _train_objective(ctx, objective=objective, frozen=frozen, table=table, reward=reward, quick=quick, quick_base=quick_base)
        x = final.sample(model)
        rec = result(objective, x, floor, base["distances"][head] if floor is not None else None)
        rec.update(record)
        ctx.log({"stage": "finetune", "part": "result", "model": objective, **{k: v for k, v in rec.items() if k != "curve"}})
        tuned[objective] = rec
        shown[objective] = x

    tilted: dict[str, Any] = {}
    data_floor = None
    if law is not None:
        m = final.measure(final.floor_set, only=head)
        tilted = {
            "mean_reward": _num(m["mean_reward"]),
            "to_base": _num(m["to_base"]) if "to_base" in m else None,
            "mode_tv": mode_tv(final.floor_set),
            "mode_weights": [_num(w) for w in mixture[2]] if mixture is not None else None,
        }
    if final.data_ref is not None:
        data_floor = _num(_compare(head_metrics[:1], final.data_floor, final.data_ref, final.metric_seed)[head])

    summary: dict[str, Any] = {
        "reward": " + ".join(f"{w:g} * {lab}" for lab, (w, _) in zip(reward.labels, reward.terms)),
        "objectives": list(cfg.objectives),
        "steps": cfg.steps,
        "samples": cfg.samples,
        "ode_integrator": cfg.ode_integrator.name,
        "ode_steps": cfg.ode_steps,
        "headline_metric": head,
        "exact": law is not None,
        "floor": {k: _num(v) for k, v in floor.items()} if floor is not None else None,
        "data_floor": data_floor,
        "base": base,
        "tuned": tuned,
        "tilted": tilted,
        "quick": {"samples": cfg.eval_samples, "base": _num(quick_base["distance"]), "floor": _num(quick_floor)},
    }
    checks: dict[str, Any] = {}
    if law is not None:
        checks["gap_closed"] = {obj: rec["gap_closed"] for obj, rec in tuned.items()}
        if "mfm-ft" in tuned and "reward-weighted" in tuned:
            a, b = tuned["mfm-ft"]["gap_closed"], tuned["reward-weighted"]["gap_closed"]
            checks["mfm_ft_vs_reward_weighted"] = [a, b]
            checks["mfm_ft_at_least_as_good"] = a is not None and b is not None and a >= b
    checks["mean_reward"] = {obj: rec["mean_reward"] for obj, rec in tuned.items()}
    summary["checks"] = checks
    summary["plots"] = _write_plots(ctx, summary, shown, law, frozen) if cfg.plots else []
    summary["seconds"] = round(time.time() - began, 2)
    ctx.tables["finetune"] = format_finetune(summary)
    ctx.plugins.hook.mfm_evaluation_results(run=ctx, stage="finetune", results=summary)
    return summary
