"""The steered sampling engine: integrate the exactly tilted dynamics with any value estimator.

Target: ``p_r(x_1) ~ p_1(x_1) exp(r(x_1))``. With the value ``V_t(x) = log E[exp r(x_1) | x_t = x]``
and ``g_t = alpha_t (alpha_t dbeta_t / beta_t - dalpha_t)`` (MATH.md section 6), the tilted
marginals ``p_t exp(V_t)`` are transported by

    ODE:  dx/dt = b_t(x) + g_t grad V_t(x)
    SDE:  dx = [b_t(x) + g_t grad log p_t(x) + 2 g_t grad V_t(x)] dt + sqrt(2 g_t) dW

where ``b_t`` is the base drift (the model's ``t = 0`` slice) and the score comes from ``b`` by
the interpolant's conversion. The engine is generic: it asks the estimator for ``b_t(x)`` and
``grad V_t(x)`` (:meth:`~mfm_framework.interfaces.ValueEstimator.drift_and_grad_value`, so an
estimator that evaluates the base model anyway shares that forward) and hands the drift to the
integrator over the caller's explicit time grid. Every network and reward call is counted by a
:class:`~mfm_framework.ledger.CostLedger`.

**The start.** ``g_t`` is infinite at t = 0 (where ``grad V_0 = 0``), so the integration starts at
a small ``t_min > 0`` (or ``g_t`` is clamped with ``g_max``). The state at ``t_min`` must then be a
draw of the marginal there: for a linear interpolant, pure noise is *not* a draw of ``p_{t_min}``
(``x_{t_min} = (1 - t_min) x_0 + t_min x_1``). A closed-form ``p_{t_min}`` is not available in
general, so the engine takes its initial state from the caller; :func:`unsteered_start`
produces one by integrating the unsteered base ODE from pure noise at t = 0 to ``t_min`` (tests
on Gaussian data draw it exactly instead). Starting from ``p_{t_min}`` rather than the tilted
``p_{t_min} exp(V_{t_min})`` is an error that vanishes as ``t_min -> 0``.

**The end.** ``g_1 = 0`` (``alpha_1 = 0``): where ``g_t = 0`` the estimator is not called and the
drift is the base drift alone (the score term, singular at t = 1, is left out with it).
"""

from __future__ import annotations

import math
from typing import Any

import attrs
import torch
from torch import Tensor

from mfm_framework.grids import uniform_grid
from mfm_framework.interfaces import Integrator, SteeringContext, ValueEstimator
from mfm_framework.interfaces._time import pad_time
from mfm_framework.ledger import Cost, CostLedger

__all__ = ["SamplingResult", "SteeredResult", "check_compatible", "steered_sample", "unsteered_start"]


def _name(component: Any) -> str:
    return str(getattr(component, "name", None) or type(component).__name__)


def check_compatible(estimator: ValueEstimator | type, reward: Any) -> None:
    """Check that ``estimator`` can steer with ``reward`` (instances or classes alike).

    Raises:
        ValueError: when the estimator back-propagates through the reward
            (``requires_differentiable_reward``) and the reward is not differentiable.
    """
    if getattr(estimator, "requires_differentiable_reward", False) and not getattr(reward, "is_differentiable", True):
        raise ValueError(
            f"value estimator {_name(estimator)!r} back-propagates through the reward, but reward "
            f"{_name(reward)!r} is not differentiable; choose a gradient-free value estimator "
            "(one with requires_differentiable_reward = False, see `mfm ls value-estimators`) "
            "or a differentiable reward"
        )


@attrs.frozen(kw_only=True)
class SamplingResult:
    """The record every steering method returns (the steered sampler and the sampler-level baselines).

    An evaluation treats every method alike through these fields and :meth:`flags`; the
    subclasses (:class:`SteeredResult`, :class:`mfm_framework.baselines.BaselineResult`) add
    what is particular to a method.

    Attributes:
        samples: the output samples ``[B, *D]``.
        cost: the cost per output sample, counted by the ledger (wall time in total).
        method: which method produced them (``"steered"``, ``"best-of-n"``, ``"sir"``, ...).
    """

    samples: Tensor
    cost: Cost
    method: str

    def flags(self) -> dict[str, Any]:
        """The settings and flags that qualify the samples, as a plain dict (for summaries)."""
        return {"method": self.method}


@attrs.frozen(kw_only=True)
class SteeredResult(SamplingResult):
    """What :func:`steered_sample` returns.

    Attributes:
        samples: the final states ``[B, *D]`` (draws of ``p_r`` when ``b`` and ``grad V`` are exact).
        cost: the cost per output sample, counted by the ledger (wall time in total).
        method: ``"steered"``.
        times: the grid integrated over, ``[K + 1]``.
        path: the states on the grid ``[K + 1, B, *D]``, or ``None`` unless asked for.
        sde: True for the SDE, False for the ODE.
        drift_evaluations: drift evaluations per sample made by the integrator.
        g_max: the clamp of ``g_t``, or ``None``.
        clamped: True when the clamp changed ``g_t`` at some drift evaluation (the dynamics are
            then no longer the exact steered ones).
        renormalize: ``kappa`` of the renormalisation, or ``None``.
        renormalized: True when ``g_t grad V`` was replaced by ``kappa |b| grad V / |grad V|``
            (changes the semantics: the samples are no longer draws of ``p_r``).
        estimator: the value estimator's name.
        integrator: the integrator's name.
    """

    method: str = "steered"
    times: Tensor
    path: Tensor | None
    sde: bool
    drift_evaluations: int
    g_max: float | None
    clamped: bool
    renormalize: float | None
    renormalized: bool
    estimator: str
    integrator: str

    def flags(self) -> dict[str, Any]:
        """The settings and flags that qualify the samples, as a plain dict (for summaries)."""
        return {
            "method": self.method,
            "estimator": self.estimator,
            "integrator": self.integrator,
            "sde": self.sde,
            "steps": int(self.times.numel() - 1),
            "t_min": float(self.times[0]),
            "g_max": self.g_max,
            "clamped": self.clamped,
            "renormalize": self.renormalize,
            "renormalized": self.renormalized,
        }


def _check_grid(times: Tensor, *, g_max: float | None) -> Tensor:
    times = torch.as_tensor(times)
    if times.ndim != 1 or times.numel() < 2:
        raise ValueError(f"the time grid must be 1-D with at least 2 points, got shape {tuple(times.shape)}")
    if not bool((times[1:] > times[:-1]).all()):
        raise ValueError("the steering time grid must increase strictly (from t_min towards 1)")
    if float(times[0]) < 0 or float(times[-1]) > 1:
        raise ValueError(f"steering times must lie in [0, 1], got {float(times[0])} to {float(times[-1])}")
    if float(times[0]) == 0 and g_max is None:
        raise ValueError(
            "g_t is infinite at t = 0: start the steering grid at a small t_min > 0 "
            "(see unsteered_start) or clamp g_t with g_max"
        )
    return times


def _norm(v: Tensor) -> Tensor:
    """Per-sample Euclidean norm of ``[B, *D]`` over every non-batch dimension, ``[B]``."""
    return v.reshape(v.shape[0], -1).norm(dim=1)


def steered_sample(
    *,
    estimator: ValueEstimator,
    integrator: Integrator,
    context: SteeringContext,
    x: Tensor,
    times: Tensor,
    sde: bool = False,
    g_max: float | None = None,
    renormalize: float | None = None,
    keep_path: bool = False,
) -> SteeredResult:
    """Integrate the steered ODE or SDE of MATH.md section 6 from ``x`` at ``times[0]`` to ``times[-1]``.

    At each drift evaluation ``(t, x)`` with ``g_t > 0``: ``b, gV = estimator.drift_and_grad_value``
    and the drift is ``b + g_t gV`` (ODE) or ``b + g_t score(b) + 2 g_t gV`` with noise
    ``sqrt(2 g_t)`` (SDE; the score ``grad log p_t`` from ``b`` by the interpolant's conversion).
    Where ``g_t = 0`` (t = 1) the drift is the base drift alone. Runs under ``torch.no_grad()``
    (estimators enable gradients where they need them).

    Args:
        estimator: any value estimator.
        integrator: any integrator; stochastic for ``sde=True``.
        context: the model (its ``t = 0`` slice gives ``b``), reward, generator (posterior draws
            and Brownian increments), labels ``cond`` ``[B]`` or None, and the ledger to count
            with (a fresh one when None; the result's cost covers this call only either way).
        x: the initial state ``[B, *D]``: a draw of the marginal at ``times[0]`` (see the module
            docstring and :func:`unsteered_start`).
        times: explicit increasing grid from ``t_min`` to (usually) 1, ``[K + 1]``.
        sde: integrate the SDE instead of the ODE.
        g_max: clamp ``g_t`` at this value (required when ``times[0] = 0``); reported in
            ``clamped`` when it takes effect.
        renormalize: ``kappa``: replace ``g_t grad V`` by ``kappa |b| grad V / |grad V|`` per
            sample (the paper's ImageNet runs; in the SDE both occurrences); 0 where ``grad V = 0``.
        keep_path: also return the states on the grid.

    Returns:
        :class:`SteeredResult`. Cost: per drift evaluation 1 base NFE plus the estimator's cost
        (e.g. ``K + 4NK`` for MFM-G over K Euler steps), as counted.

    Raises:
        ValueError: for a non-differentiable reward with an estimator that needs one, an SDE with
            a deterministic integrator, a malformed grid, or ``t = 0`` on the grid without
            ``g_max``.
    """
    check_compatible(estimator, context.reward)
    if sde and not integrator.stochastic:
        raise ValueError(
            f"integrator {_name(integrator)!r} is deterministic and cannot integrate the steered SDE; "
            "choose a stochastic integrator (`mfm ls integrators`)"
        )
    if g_max is not None and not g_max > 0:
        raise ValueError(f"g_max must be > 0, got {g_max}")
    if renormalize is not None and not (math.isfinite(renormalize) and renormalize >= 0):
        raise ValueError(f"renormalize (kappa) must be a finite number >= 0, got {renormalize}")
    times = _check_grid(times, g_max=g_max)
    model = context.model
    interp = model.interpolant
    ledger = context.ledger if context.ledger is not None else CostLedger()
    clamped = False

    def coefficient(t: Tensor) -> Tensor:
        nonlocal clamped
        g = interp.steering_coefficient(t)
        if g_max is not None:
            clamped = clamped or bool((g > g_max).any())
            g = g.clamp(max=g_max)
        return g

    start = ledger.totals()
    with ledger.attach(model, context.reward) as reward, torch.no_grad():
        ctx = attrs.evolve(context, reward=reward, ledger=ledger)

        def drift(*, t: Tensor, x: Tensor) -> Tensor:
            g = coefficient(t)
            active = g > 0
            if not bool(active.any()):
                return estimator.base_drift(t=t, x=x, context=ctx)
            b, grad = estimator.drift_and_grad_value(t=t, x=x, context=ctx)
            zero = torch.zeros_like(g)
            if renormalize is not None:  # kappa |b| / |grad V| where g_t > 0 and grad V != 0
                norm = _norm(grad)
                scale = renormalize * _norm(b) / torch.where(norm > 0, norm, torch.ones_like(norm))
                scale = torch.where(active & (norm > 0), scale, zero)
            else:
                scale = torch.where(active, g, zero)
            term = pad_time(scale, x) * grad
            if not sde:
                return b + term
            score = interp.score_from_velocity(t=t, x=x, velocity=b)
            g_score = torch.where(pad_time(active.to(x.dtype), x) > 0, pad_time(g, x) * score, torch.zeros_like(score))
            return b + g_score + 2 * term

        def diffusion(*, t: Tensor, x: Tensor) -> Tensor:
            return (2 * coefficient(t)).sqrt()

        result = integrator.integrate(
            drift,
            x=x.detach(),
            times=times,
            diffusion=diffusion if sde else None,
            generator=ctx.generator,
            keep_path=keep_path,
        )
        if result.x.is_cuda:  # the wall time covers the queued kernels too
            torch.cuda.synchronize(result.x.device)
    return SteeredResult(
        samples=result.x,
        cost=ledger.cost(samples=x.shape[0], since=start),
        times=result.times,
        path=result.path,
        sde=sde,
        drift_evaluations=result.nfe,
        g_max=g_max,
        clamped=clamped,
        renormalize=renormalize,
        renormalized=renormalize is not None,
        estimator=_name(estimator),
        integrator=_name(integrator),
    )


def unsteered_start(
    *,
    model: Any,
    integrator: Integrator,
    noise: Tensor,
    t_min: float,
    steps: int,
    cond: Tensor | None = None,
) -> Tensor:
    """A draw of ``p_{t_min}``: the unsteered base ODE ``dx/dt = b_t(x)`` from noise at t = 0 to ``t_min``.

    ``p_0 = N(0, I)`` (``alpha_0 = 1``, ``beta_0 = 0``), so ``noise`` is an exact draw at t = 0; the
    result is exact up to the integrator's error on ``steps`` uniform steps. The start the steering
    engine needs (see the module docstring).

    Args:
        model: the meta flow map (its ``drift``, the ``t = 0`` slice).
        integrator: a (deterministic) integrator.
        noise: ``x_0 ~ N(0, I)``, ``[B, *D]``.
        t_min: the end time, in [0, 1).
        steps: uniform steps from 0 to ``t_min``.
        cond: labels ``[B]`` or None.

    Returns:
        ``[B, *D]``. Cost: the integrator's NFE of the base model (``steps`` for Euler); counted by
        a ledger attached to ``model``, not part of :func:`steered_sample`'s cost.
    """
    if not 0 <= t_min < 1:
        raise ValueError(f"t_min must lie in [0, 1), got {t_min}")
    if t_min == 0:
        return noise
    grid = uniform_grid(0.0, t_min, steps, dtype=noise.dtype, device=noise.device)
    with torch.no_grad():
        return integrator.integrate(lambda *, t, x: model.drift(t=t, x=x, cond=cond), x=noise, times=grid).x
