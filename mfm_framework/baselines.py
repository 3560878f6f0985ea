"""Sampler-level steering baselines: Best-of-N, SIR, SMC (Feynman-Kac steering) and MFM-Search.

Every method targets (or, for the greedy ones, chases) the tilted law ``p_r(x_1) ~ p_1(x_1)
exp(r(x_1))`` of MATH.md section 6 without steering the dynamics by ``grad V``: they draw
unsteered samples and select, weight or resample them by the reward. Each returns a
:class:`BaselineResult`, a :class:`~mfm_framework.steering.SamplingResult` like the steered
sampler's, so an evaluation treats every method alike; its ``cost`` is counted by a
:class:`~mfm_framework.ledger.CostLedger` attached around the work (``context.ledger``, or a fresh
one), never computed from a formula. The paper's accounting (1 NFE per network forward or reward
call) gives, per output sample:

==============  ==========================================  =================================
method          what it does                                cost in NFE (counted)
==============  ==========================================  =================================
Best-of-N       N base samples, keep the highest reward     ``K N + N`` (K: the sampler's NFE)
SIR-N           N base samples, resample one ~ ``exp r``    ``K N + N``
SMC             P particles on the base SDE, potentials     ``P (K + K C_V + 1)`` (+ the start)
                ``V_t``, resampling on low ESS
MFM-Search      M chains, N posterior draws a step, keep    ``2 M N K`` (one-step draws)
                the best, re-noise
==============  ==========================================  =================================

(``C_V``: the value estimator's NFE per call, e.g. ``2N`` for MFM-GF, 0 for an exact oracle.)

Randomness comes from ``context.generator`` alone (base draws, resampling, SDE increments,
posterior noise). Everything runs under ``torch.no_grad()``. The reward is maximised as given
(steering tilts by ``exp r``): ``Reward.higher_is_better`` is a display convention and is not read.
"""

from __future__ import annotations

from typing import Any, Literal, Protocol, runtime_checkable

import attrs
import torch
from torch import Tensor

from mfm_framework.interfaces import Integrator, SteeringContext, ValueEstimator
from mfm_framework.ledger import CostLedger
from mfm_framework.sampling import kernel_sample, ode_sample
from mfm_framework.steering import SamplingResult, steered_sample, unsteered_start

__all__ = [
    "BaseSampler",
    "BaselineResult",
    "KernelSampler",
    "ODESampler",
    "best_of_n",
    "effective_sample_size",
    "mfm_search",
    "resample",
    "sir",
    "smc",
]

Resampling = Literal["systematic", "multinomial"]


# --------------------------------------------------------------------------- the result record
@attrs.frozen(kw_only=True)
class BaselineResult(SamplingResult):
    """What the sampler-level baselines return.

    Attributes:
        samples: the output samples ``[n, *D]``.
        cost: the cost per output sample, counted by the ledger (wall time in total).
        method: ``"best-of-n"``, ``"sir"``, ``"smc"`` or ``"mfm-search"``.
        rewards: ``r`` of each output sample as evaluated during the run, ``[n]`` (no extra call).
        times: the time grid of SMC and MFM-Search, ``[K + 1]``; ``None`` for Best-of-N and SIR.
        ess: SMC only: the effective sample size of each group's weights at each grid time,
            before any resampling there, ``[K + 1, n]`` (in particles, between 1 and ``P``;
            row 0 holds the initial weights ``exp V_{t_0}``, row K the final ones ``exp r``).
        resampled: SMC only: whether a group was resampled at a grid time, ``[K + 1, n]`` bool
            (row K is always False: the output is one particle drawn from the final weights).
        settings: the method's settings (counts, sampler, estimator, ...), plain values.
    """

    rewards: Tensor
    times: Tensor | None = None
    ess: Tensor | None = None
    resampled: Tensor | None = None
    settings: dict[str, Any] = attrs.field(factory=dict)

    def flags(self) -> dict[str, Any]:
        """The method and its settings as a plain dict (for summaries)."""
        return {"method": self.method, **self.settings}


# --------------------------------------------------------------------------- base samplers
@runtime_checkable
class BaseSampler(Protocol):
    """A sampler of the unsteered base law ``p_1`` that Best-of-N and SIR draw candidates from.

    Called as ``sampler(model=..., n=..., generator=..., cond=...)`` with the steering context's
    model (already attached to the cost ledger, so the sampler's network calls are counted) and
    generator, and ``cond`` labels ``[n]`` or None; returns ``n`` samples ``[n, *D]``.
    :class:`ODESampler` and :class:`KernelSampler` are the two built on a meta flow map; any
    callable of this form works (its network calls are counted when they go through ``model``).
    """

    def __call__(self, *, model: Any, n: int, generator: torch.Generator | None, cond: Tensor | None) -> Tensor: ...


@attrs.frozen(kw_only=True, eq=False)
class ODESampler:
    """Base samples by the base ODE ``dx/dt = b_t(x)`` from noise over ``times`` (:func:`ode_sample`).

    Attributes:
        integrator: a deterministic integrator (its name is reported in the settings).
        times: the grid, usually from 0 to 1, ``[K + 1]``.

    Cost: the integrator's NFE of the base model per sample (``K`` for Euler).
    """

    integrator: Integrator
    times: Tensor

    @property
    def description(self) -> str:
        name = getattr(self.integrator, "name", type(self.integrator).__name__)
        return f"ode({name}, {int(torch.as_tensor(self.times).numel()) - 1} steps)"

    def __call__(self, *, model: Any, n: int, generator: torch.Generator | None, cond: Tensor | None) -> Tensor:
        """``n`` base samples ``[n, *D]``."""
        return ode_sample(model, n=n, integrator=self.integrator, times=self.times, generator=generator, cond=cond).x


@attrs.frozen(kw_only=True)
class KernelSampler:
    """Base samples by the K-step MFM kernel sampler (:func:`kernel_sample`).

    Attributes:
        steps: the steps K (1: one unconditional jump ``X_{0,1}(eps; 0, 0)``).

    Cost: K MFM forwards per sample.
    """

    steps: int = attrs.field(default=1, validator=[attrs.validators.instance_of(int), attrs.validators.ge(1)])

    @property
    def description(self) -> str:
        return f"kernel({self.steps} steps)"

    def __call__(self, *, model: Any, n: int, generator: torch.Generator | None, cond: Tensor | None) -> Tensor:
        """``n`` base samples ``[n, *D]``."""
        return kernel_sample(model, n=n, steps=self.steps, generator=generator, cond=cond)


def _describe(component: Any) -> str:
    return str(
        getattr(component, "description", None) or getattr(component, "name", None) or type(component).__name__
    )


# --------------------------------------------------------------------------- weights and resampling
def _uniform(shape: tuple[int, ...], *, like: Tensor, generator: torch.Generator | None) -> Tensor:
    """``U[0, 1)`` draws of ``shape`` on the generator's device, moved to ``like``'s (in ``like``'s dtype)."""
    device = generator.device if generator is not None else like.device
    return torch.rand(shape, generator=generator, device=device, dtype=like.dtype).to(like.device)


def _noise(shape: tuple[int, ...], *, like: Tensor, generator: torch.Generator | None) -> Tensor:
    """Standard normals of ``shape`` on the generator's device, moved to ``like``'s."""
    device = generator.device if generator is not None else like.device
    return torch.randn(shape, generator=generator, device=device, dtype=like.dtype).to(like.device)


def _inverse_cdf(log_weights: Tensor, positions: Tensor) -> Tensor:
    """Indices ``[G, M]`` whose normalised cumulative weights first exceed ``positions`` ``[G, M]`` in [0, 1)."""
    cdf = torch.softmax(log_weights, dim=1).cumsum(dim=1)
    index = torch.searchsorted(cdf.contiguous(), positions.contiguous(), right=True)
    return index.clamp_(max=log_weights.shape[1] - 1)


def effective_sample_size(log_weights: Tensor) -> Tensor:
    """Kish's effective sample size ``(sum w)^2 / sum w^2`` of each row of ``log_weights`` ``[G, P]``: ``[G]``.

    Between 1 (one particle carries all the weight) and ``P`` (uniform weights).
    """
    w = torch.softmax(log_weights, dim=1)
    return 1.0 / (w * w).sum(dim=1)


def resample(
    log_weights: Tensor, *, generator: torch.Generator | None = None, scheme: Resampling = "systematic"
) -> Tensor:
    """Ancestor indices ``[G, P]``: each row's ``P`` particles resampled in proportion to ``exp(log_weights)``.

    ``"systematic"``: one uniform ``u`` per row, positions ``(u + j) / P``, ``j = 0..P-1`` (each
    particle gets ``floor(P w_i)`` or ``ceil(P w_i)`` copies; lower variance). ``"multinomial"``:
    ``P`` independent draws per row. Both are unbiased: the expected copies of particle ``i`` are
    ``P w_i``.

    Args:
        log_weights: unnormalised log-weights ``[G, P]`` (groups resampled independently).
        generator: the random generator (the steering context's).
        scheme: ``"systematic"`` or ``"multinomial"``.

    Returns:
        Indices into dimension 1, ``[G, P]`` (int64).
    """
    groups, p = log_weights.shape
    if scheme == "systematic":
        u = _uniform((groups, 1), like=log_weights, generator=generator)
        positions = (u + torch.arange(p, device=log_weights.device, dtype=log_weights.dtype)) / p
    elif scheme == "multinomial":
        positions = _uniform((groups, p), like=log_weights, generator=generator)
    else:
        raise ValueError(f"unknown resampling scheme {scheme!r}; expected 'systematic' or 'multinomial'")
    return _inverse_cdf(log_weights, positions)


def _draw_one(log_weights: Tensor, generator: torch.Generator | None) -> Tensor:
    """One index per row ``[G]``, drawn in proportion to ``exp(log_weights)`` ``[G, N]``."""
    u = _uniform((log_weights.shape[0], 1), like=log_weights, generator=generator)
    return _inverse_cdf(log_weights, u)[:, 0]


# --------------------------------------------------------------------------- shared plumbing
def _positive(name: str, value: Any) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    return value


def _check_cond(context: SteeringContext, n: int) -> None:
    cond = context.cond
    if cond is not None and tuple(cond.shape) != (n,):
        raise ValueError(f"context.cond must hold one label per output sample, shape [{n}], got {tuple(cond.shape)}")


def _repeat(cond: Tensor | None, times: int) -> Tensor | None:
    return None if cond is None else cond.repeat_interleave(times)


def _like(model: Any) -> Tensor:
    """A tensor with the model's device and dtype."""
    return next(model.parameters())


def _pick(values: Tensor, index: Tensor) -> Tensor:
    """``values[g, index[g]]`` for ``values`` ``[G, N, *D]`` and ``index`` ``[G]``: ``[G, *D]``."""
    return values[torch.arange(values.shape[0], device=values.device), index]


def _ledger(context: SteeringContext) -> CostLedger:
    return context.ledger if context.ledger is not None else CostLedger()


def _synchronize(x: Tensor) -> None:
    if x.is_cuda:  # the wall time covers the queued kernels too
        torch.cuda.synchronize(x.device)


def _candidates(
    *, context: SteeringContext, n: int, draws: int, sampler: BaseSampler, max_batch: int | None
) -> tuple[Tensor, Tensor, CostLedger, Any]:
    """``draws`` base samples per output sample ``[n, N, *D]`` and their rewards ``[n, N]``, counted."""
    _positive("n", n)
    _positive("draws", draws)
    if max_batch is not None:
        _positive("max_batch", max_batch)
    _check_cond(context, n)
    ledger = _ledger(context)
    start = ledger.totals()
    model = context.model
    total = n * draws
    chunk = total if max_batch is None else max_batch
    cond = _repeat(context.cond, draws)
    with ledger.attach(model, context.reward) as reward, torch.no_grad():
        xs, rs = [], []
        for lo in range(0, total, chunk):
            hi = min(total, lo + chunk)
            c = None if cond is None else cond[lo:hi]
            x = sampler(model=model, n=hi - lo, generator=context.generator, cond=c)
            if x.shape[0] != hi - lo:
                raise ValueError(f"the base sampler returned {x.shape[0]} samples, {hi - lo} were asked for")
            xs.append(x)
            rs.append(reward(x, cond=c))
        x = torch.cat(xs)
        r = torch.cat(rs).reshape(n, draws)
        _synchronize(x)
    return x.reshape(n, draws, *x.shape[1:]), r, ledger, start


# --------------------------------------------------------------------------- Best-of-N and SIR
def best_of_n(
    *,
    context: SteeringContext,
    n: int,
    draws: int,
    sampler: BaseSampler,
    max_batch: int | None = None,
) -> BaselineResult:
    """Best-of-N: per output sample, ``N`` unsteered base samples; keep the one with the highest reward.

    Not a sampler of ``p_r``: it concentrates on the reward's maxima as N grows. Ties go to the
    first draw.

    Args:
        context: model, reward, generator, labels ``cond`` ``[n]`` (or None; each output sample's
            candidates share its label) and the ledger to count with (a fresh one when None).
        n: output samples.
        draws: candidates N per output sample.
        sampler: the base sampler (:class:`ODESampler`, :class:`KernelSampler`, or any
            :class:`BaseSampler`).
        max_batch: at most this many candidates per sampler call (None: all ``n N`` at once).

    Returns:
        :class:`BaselineResult`: ``samples`` ``[n, *D]``, ``rewards`` ``[n]`` (the maxima).
        Cost per output sample: ``K N + N`` NFE for a K-NFE sampler (N samples, N reward calls).
    """
    x, r, ledger, start = _candidates(context=context, n=n, draws=draws, sampler=sampler, max_batch=max_batch)
    best = r.argmax(dim=1)
    return BaselineResult(
        samples=_pick(x, best),
        cost=ledger.cost(samples=n, since=start),
        method="best-of-n",
        rewards=_pick(r, best),
        settings={"draws": draws, "sampler": _describe(sampler)},
    )


def sir(
    *,
    context: SteeringContext,
    n: int,
    draws: int,
    sampler: BaseSampler,
    max_batch: int | None = None,
) -> BaselineResult:
    """SIR-N (sampling-importance-resampling): N base samples, resample one in proportion to ``exp r``.

    Per output sample, independently: ``x^i ~ p_1`` (``i = 1..N``), then ``x^j`` with probability
    ``softmax(r)_j``. The law of the output converges to ``p_r`` as N grows (bias ``O(1/N)``).

    Args:
        context: model, reward, generator, labels ``cond`` ``[n]`` or None, and the ledger.
        n: output samples.
        draws: candidates N per output sample.
        sampler: the base sampler.
        max_batch: at most this many candidates per sampler call.

    Returns:
        :class:`BaselineResult`: ``samples`` ``[n, *D]``, ``rewards`` ``[n]``. Cost per output
        sample: ``K N + N`` NFE for a K-NFE sampler.
    """
    x, r, ledger, start = _candidates(context=context, n=n, draws=draws, sampler=sampler, max_batch=max_batch)
    chosen = _draw_one(r, context.generator)
    return BaselineResult(
        samples=_pick(x, chosen),
        cost=ledger.cost(samples=n, since=start),
        method="sir",
        rewards=_pick(r, chosen),
        settings={"draws": draws, "sampler": _describe(sampler)},
    )


# --------------------------------------------------------------------------- SMC
class _BaseDynamics(ValueEstimator):
    """``grad V = 0``: with it, :func:`steered_sample` integrates the unsteered base SDE (internal)."""

    name = "none"

    def grad_value(self, *, t: Tensor, x: Tensor, context: SteeringContext) -> Tensor:
        return torch.zeros_like(x)

    def value(self, *, t: Tensor, x: Tensor, context: SteeringContext) -> Tensor:
        return torch.zeros(x.shape[0], dtype=x.dtype, device=x.device)


def _check_times(times: Tensor, *, first: str, like: Tensor) -> Tensor:
    """Validate a grid that starts at 0 (``first="zero"``) or in (0, 1) (``"positive"``) and ends
    at 1; return it on ``like``'s device and dtype."""
    times = torch.as_tensor(times)
    if times.ndim != 1 or times.numel() < 2:
        raise ValueError(f"the time grid must be 1-D with at least 2 points, got shape {tuple(times.shape)}")
    if not bool((times[1:] > times[:-1]).all()):
        raise ValueError("the time grid must increase strictly")
    if first == "zero" and float(times[0]) != 0:
        raise ValueError(f"the grid must start at t = 0, got {float(times[0])}")
    if first == "positive" and not 0 < float(times[0]) < 1:
        raise ValueError(
            f"the grid must start at a t_min in (0, 1), got {float(times[0])} (the base SDE's g_t is infinite at t = 0)"
        )
    if float(times[-1]) != 1:
        raise ValueError(f"the grid must end at t = 1, got {float(times[-1])}")
    return times.to(device=like.device, dtype=like.dtype)


def smc(
    *,
    context: SteeringContext,
    estimator: ValueEstimator,
    integrator: Integrator,
    times: Tensor,
    n: int,
    particles: int,
    ess_threshold: float = 0.5,
    resampling: Resampling = "systematic",
    x: Tensor | None = None,
    start_steps: int = 8,
    start_integrator: Integrator | None = None,
) -> BaselineResult:
    """SMC / Feynman-Kac steering: particles on the base SDE, weighted by value potentials, resampled on low ESS.

    Per output sample a group of ``P`` particles starts from ``p_{t_0}`` (``t_0 = times[0] > 0``)
    with log-weights ``V_{t_0}(x_0)`` and moves along the **unsteered base SDE**
    ``dx = [b_t + g_t grad log p_t] dt + sqrt(2 g_t) dW`` (marginals ``p_t``; one step of
    ``integrator`` per grid interval; the drift is built by :func:`steered_sample` itself, with
    ``grad V = 0``, so it is the same code path as the steered SDE). The SDE rather than the ODE:
    resampled copies of a particle must diverge again. After each move the log-weights gain
    ``V_{t_{k+1}}(x_{k+1}) - V_{t_k}(x_k)`` (``estimator.value``; each particle's last value is
    carried, through resampling too), and at ``t_K = 1`` the reward itself replaces ``V_1``. The
    increments telescope: a path's total weight is ``exp r(x_1)``, whatever the estimate of V,
    so the weighted particles target ``p_r`` (exactly as ``P`` grows, up to the SDE's
    discretisation); a good V keeps the weights even. Where a group's effective sample size falls
    below ``ess_threshold * P`` at a grid time before the last, it is resampled (``resampling``,
    with ``context.generator``) and its log-weights reset to 0. The output is one particle per
    group, drawn in proportion to its final weights.

    Args:
        context: model, reward, generator (start noise, SDE increments, resampling, the
            estimator's draws), labels ``cond`` ``[n]`` or None (shared by a group), the ledger.
        estimator: any value estimator; only ``value`` is called (so reward gradients are never
            needed).
        integrator: a stochastic integrator (e.g. Euler-Maruyama).
        times: the grid ``[K + 1]`` from ``t_min > 0`` to 1; potentials at every grid time.
        n: output samples (groups).
        particles: particles P per group.
        ess_threshold: resample a group when its ESS ``< ess_threshold * P`` (0: never, plain
            sequential importance sampling; 1: nearly always).
        resampling: ``"systematic"`` or ``"multinomial"``.
        x: the initial particles ``[n P, *D]`` (group g is rows ``g P .. g P + P - 1``), draws of
            ``p_{t_0}``; when None they come from :func:`unsteered_start` (the base ODE from noise
            over ``start_steps`` uniform steps), counted in the cost.
        start_steps: steps of that start.
        start_integrator: the integrator of that start (default: ``integrator`` without noise).

    Returns:
        :class:`BaselineResult` with ``samples`` ``[n, *D]``, their ``rewards`` ``[n]``, ``times``,
        the ESS trace ``ess`` ``[K + 1, n]`` and ``resampled`` ``[K + 1, n]``. Cost per output
        sample, as counted: ``P`` particles times (K base forwards of the SDE, K value calls at
        ``t_0 .. t_{K-1}`` of ``C_V`` NFE each, 1 reward call), plus ``P * start_steps`` base
        forwards of the start when ``x`` is None.

    Raises:
        ValueError: for bad counts, a threshold outside [0, 1], a deterministic integrator, a
            grid that does not run from some ``t_min`` in (0, 1) to 1, or a malformed ``x``.
    """
    _positive("n", n)
    p = _positive("particles", particles)
    if not 0 <= ess_threshold <= 1:
        raise ValueError(f"ess_threshold must lie in [0, 1], got {ess_threshold}")
    if resampling not in ("systematic", "multinomial"):
        raise ValueError(f"unknown resampling scheme {resampling!r}; expected 'systematic' or 'multinomial'")
    if not integrator.stochastic:
        raise ValueError(
            f"integrator {getattr(integrator, 'name', type(integrator).__name__)!r} is deterministic; SMC moves "
            "particles along the base SDE (resampled copies must diverge): choose a stochastic integrator"
        )
    _check_cond(context, n)
    model = context.model
    like = _like(model)
    times = _check_times(times, first="positive", like=like)
    shape = tuple(model.data_shape)
    total, steps = n * p, times.numel() - 1
    if x is not None and tuple(x.shape) != (total, *shape):
        raise ValueError(
            f"x must hold n * particles = {total} initial particles of shape {shape}, got {tuple(x.shape)}"
        )
    ledger = _ledger(context)
    start = ledger.totals()
    dynamics = _BaseDynamics()
    ess = torch.ones(steps + 1, n, dtype=like.dtype)
    resampled = torch.zeros(steps + 1, n, dtype=torch.bool)
    groups = torch.arange(n, device=like.device)
    with ledger.attach(model, context.reward) as reward, torch.no_grad():
        ctx = attrs.evolve(context, reward=reward, ledger=ledger, cond=_repeat(context.cond, p))
        if x is None:
            noise = _noise((total, *shape), like=like, generator=context.generator)
            x = unsteered_start(
                model=model,
                integrator=start_integrator if start_integrator is not None else integrator,
                noise=noise,
                t_min=float(times[0]),
                steps=start_steps,
                cond=ctx.cond,
            )
        x = x.detach().to(device=like.device, dtype=like.dtype)
        value = estimator.value(t=times[0].expand(total), x=x, context=ctx).reshape(n, p)
        log_w = value.clone()
        for k in range(steps + 1):
            if k > 0:
                x = steered_sample(
                    estimator=dynamics, integrator=integrator, context=ctx, x=x, times=times[k - 1 : k + 1], sde=True
                ).samples
                if k < steps:
                    new = estimator.value(t=times[k].expand(total), x=x, context=ctx)
                else:
                    new = reward(x, cond=ctx.cond)
                new = new.reshape(n, p)
                log_w = log_w + new - value
                value = new
            ess[k] = effective_sample_size(log_w).cpu()
            if k == steps:
                break
            low = ess[k] < ess_threshold * p
            if bool(low.any()):
                rows = low.nonzero().squeeze(1).to(like.device)
                ancestors = torch.arange(p, device=like.device).expand(n, p).clone()
                ancestors[rows] = resample(log_w[rows], generator=context.generator, scheme=resampling)
                x = x.reshape(n, p, *shape)[groups[:, None], ancestors].reshape(total, *shape)
                value = value[groups[:, None], ancestors]
                log_w = torch.where(low.to(like.device)[:, None], torch.zeros_like(log_w), log_w)
                resampled[k] = low
        chosen = _draw_one(log_w, context.generator)
        samples = _pick(x.reshape(n, p, *shape), chosen)
        _synchronize(samples)
    return BaselineResult(
        samples=samples,
        cost=ledger.cost(samples=n, since=start),
        method="smc",
        rewards=_pick(value, chosen),
        times=times,
        ess=ess,
        resampled=resampled,
        settings={
            "estimator": str(getattr(estimator, "name", None) or type(estimator).__name__),
            "integrator": str(getattr(integrator, "name", None) or type(integrator).__name__),
            "particles": p,
            "steps": steps,
            "t_min": float(times[0]),
            "ess_threshold": ess_threshold,
            "resampling": resampling,
            "resample_events": int(resampled.sum()),
        },
    )


# --------------------------------------------------------------------------- MFM-Search
def mfm_search(
    *,
    context: SteeringContext,
    n: int,
    draws: int,
    times: Tensor,
    particles: int = 1,
    posterior_steps: int = 1,
) -> BaselineResult:
    """MFM-Search: greedy search with posterior draws; keep the best draw each step and re-noise it.

    Per output sample ``M`` independent chains. On the grid ``0 = t_0 < ... < t_K = 1``, at
    step ``k = 0..K-1`` each chain at context ``(t_k, x)`` (``x = 0`` at ``t_0 = 0``, as in the
    kernel sampler) draws ``N`` posterior samples ``xh_i = X_{0,1}(eps_i; t_k, x)`` with the meta
    flow map (``posterior_steps`` inner jumps each), keeps the one with the highest reward and,
    unless it is the last step, re-noises it to the next time: ``x = alpha_{t_{k+1}} eps' +
    beta_{t_{k+1}} xh``. The output is the best last-step draw over the ``M`` chains. A
    search (it chases high reward), not a sampler of ``p_r``.

    Args:
        context: the meta flow map, reward, generator (posterior and re-noising noise), labels
            ``cond`` ``[n]`` or None, and the ledger.
        n: output samples.
        draws: posterior draws N per chain and step.
        times: the grid ``[K + 1]`` from 0 to 1 (K steps; the contexts are ``times[:-1]``).
        particles: chains M per output sample.
        posterior_steps: inner jumps S of each posterior draw.

    Returns:
        :class:`BaselineResult`: ``samples`` ``[n, *D]``, ``rewards`` ``[n]``, ``times``. Cost per
        output sample, as counted: ``M N K S`` MFM forwards and ``M N K`` reward calls
        (``2 M N K`` NFE for one-step draws).
    """
    _positive("n", n)
    m = _positive("particles", particles)
    _positive("draws", draws)
    _positive("posterior_steps", posterior_steps)
    _check_cond(context, n)
    model = context.model
    like = _like(model)
    times = _check_times(times, first="zero", like=like)
    shape = tuple(model.data_shape)
    chains, steps = n * m, times.numel() - 1
    cond = _repeat(context.cond, m)
    cond_draws = _repeat(cond, draws)
    ledger = _ledger(context)
    start = ledger.totals()
    with ledger.attach(model, context.reward) as reward, torch.no_grad():
        x = torch.zeros((chains, *shape), device=like.device, dtype=like.dtype)
        for k in range(steps):
            eps = _noise((chains, draws, *shape), like=like, generator=context.generator)
            xh = model.sample_posterior(
                t=times[k].expand(chains), x=x, n=draws, steps=posterior_steps, cond=cond, eps=eps
            )
            r = reward(xh.reshape(chains * draws, *shape), cond=cond_draws).reshape(chains, draws)
            best = r.argmax(dim=1)
            xh, r = _pick(xh, best), _pick(r, best)
            if k < steps - 1:
                xi = _noise((chains, *shape), like=like, generator=context.generator)
                x = model.interpolant.interpolate(x_0=xi, x_1=xh, t=times[k + 1].expand(chains))
        winner = r.reshape(n, m).argmax(dim=1)
        samples = _pick(xh.reshape(n, m, *shape), winner)
        _synchronize(samples)
    return BaselineResult(
        samples=samples,
        cost=ledger.cost(samples=n, since=start),
        method="mfm-search",
        rewards=_pick(r.reshape(n, m), winner),
        times=times,
        settings={"particles": m, "draws": draws, "steps": steps, "posterior_steps": posterior_steps},
    )
