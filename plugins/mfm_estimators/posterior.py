"""Value estimators from posterior draws and the base model: ``mfm-g``, ``mfm-gf``, ``dps``, ``glass-mc``.

All estimate ``V_t(x) = log E[exp r(x_1) | x_t = x]`` and its gradient in ``x`` (MATH.md
section 6). Gradients flow to ``x`` only: they are taken with ``torch.autograd.grad(inputs=[x])``
on a detached copy of ``x``, so no parameter of the model or of the reward receives a ``.grad``
and no ``requires_grad`` flag is changed. Posterior noise comes from ``context.generator``.
Every method works under an outer ``torch.no_grad()`` (the steering engine runs in one).

Shapes: ``t`` is ``[B]`` (or a scalar), ``x`` and gradients ``[B, *D]``, values ``[B]``.
Costs are per context (one row of ``x``) and per call, in the paper's NFE (a backward is 2).
"""

from __future__ import annotations

import abc
import math

import attrs
import torch
from torch import Tensor

from mfm_framework.grids import uniform_grid
from mfm_framework.interfaces import SteeringContext, ValueEstimator
from mfm_framework.interfaces._time import pad_time
from mfm_framework.model import batch_times
from mfm_framework.sampling import glass_drift

__all__ = [
    "POSTERIOR_ESTIMATORS",
    "MFMGradient",
    "MFMGradientOptions",
    "MFMGradientFree",
    "MFMGradientFreeOptions",
    "DPS",
    "GlassMonteCarlo",
    "GlassMonteCarloOptions",
]


def _noise(shape: tuple[int, ...], *, like: Tensor, generator: torch.Generator | None) -> Tensor:
    """Standard normals of ``shape`` drawn on the generator's device, moved to ``like``'s."""
    device = generator.device if generator is not None else like.device
    return torch.randn(shape, generator=generator, device=device, dtype=like.dtype).to(like.device)


def _rewards(draws: Tensor, context: SteeringContext) -> Tensor:
    """``r`` of draws ``[B, N, *D]``: ``[B, N]`` (the labels repeated per draw)."""
    batch, n = draws.shape[:2]
    cond = context.cond.repeat_interleave(n) if context.cond is not None else None
    return context.reward(draws.reshape(batch * n, *draws.shape[2:]), cond=cond).reshape(batch, n)


def _log_mean_exp(r: Tensor) -> Tensor:
    """``log (1/N) sum_i exp r_i`` over the last dimension."""
    return torch.logsumexp(r, dim=-1) - math.log(r.shape[-1])


def _positive_int(_: object, attribute: attrs.Attribute, value: object) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"'{attribute.name}' must be an integer >= 1, got {value!r}")


class _PosteriorMonteCarlo(ValueEstimator):
    """Shared by estimators that average ``exp r`` over N posterior draws (internal)."""

    requires_differentiable_reward = True

    @abc.abstractmethod
    def draws(self, *, t: Tensor, x: Tensor, context: SteeringContext) -> Tensor:
        """N posterior draws per context, ``[B, N, *D]``, differentiable in ``x``."""

    def value(self, *, t: Tensor, x: Tensor, context: SteeringContext) -> Tensor:
        """``logsumexp_i r(x_1^i) - log N``, ``[B]``."""
        with torch.no_grad():
            return _log_mean_exp(_rewards(self.draws(t=t, x=x, context=context), context))

    def grad_value(self, *, t: Tensor, x: Tensor, context: SteeringContext) -> Tensor:
        """``grad_x log (1/N) sum_i exp r(x_1^i(x))`` through the reward and the sampler, noise fixed."""
        with torch.enable_grad():
            x_ = x.detach().requires_grad_(True)
            v = _log_mean_exp(_rewards(self.draws(t=t, x=x_, context=context), context))
            (grad,) = torch.autograd.grad(v.sum(), [x_])
        return grad


@attrs.frozen(kw_only=True)
class MFMGradientOptions:
    """Options of :class:`MFMGradient`.

    Attributes:
        particles: posterior draws N per context.
        posterior_steps: inner steps K of each MFM posterior draw (1: the one-step draw
            ``X_{0,1}(eps; t, x)``).
    """

    particles: int = attrs.field(default=16, validator=_positive_int)
    posterior_steps: int = attrs.field(default=1, validator=_positive_int)


class MFMGradient(_PosteriorMonteCarlo):
    """MFM-G: ``grad V_t(x) = grad_x log (1/N) sum_i exp r(X_{0,1}(eps_i; t, x))`` (MATH.md 6).

    Back-propagates through the reward and the meta flow map with respect to ``x`` only, the
    noise ``eps_i`` held fixed. Consistent as N grows (the log of a mean is biased by O(1/N)).
    Needs a differentiable reward.

    Shapes: ``t`` ``[B]``, ``x`` ``[B, *D]``; gradient ``[B, *D]``, value ``[B]``.
    Cost per context and call of :meth:`grad_value`, with N particles and K posterior steps:
    NK MFM forwards, N reward calls and a backward through the NK MFM outputs: ``N + 3NK`` NFE
    (``4N`` for K = 1; with the steering engine's base drift, ``1 + 4N`` a step).
    :meth:`value`: ``NK + N`` NFE.
    """

    name = "mfm-g"
    Options = MFMGradientOptions

    def draws(self, *, t: Tensor, x: Tensor, context: SteeringContext) -> Tensor:
        """``X_{0,1}(eps_i; t, x)`` chained over K inner steps, ``[B, N, *D]``."""
        n = self.options.particles
        eps = _noise((x.shape[0], n, *x.shape[1:]), like=x, generator=context.generator)
        return context.model.sample_posterior(
            t=t, x=x, n=n, steps=self.options.posterior_steps, cond=context.cond, eps=eps
        )


@attrs.frozen(kw_only=True)
class MFMGradientFreeOptions:
    """Options of :class:`MFMGradientFree`.

    Attributes:
        particles: posterior draws N per context.
        posterior_steps: inner steps K of each MFM posterior draw.
    """

    particles: int = attrs.field(default=16, validator=_positive_int)
    posterior_steps: int = attrs.field(default=1, validator=_positive_int)


class MFMGradientFree(ValueEstimator):
    """MFM-GF: ``grad V_t(x) = (beta_t / alpha_t^2) (sum_i w_i x_1^i - mean_i x_1^i)``, ``w = softmax r``.

    The posterior identity ``grad V = (beta_t / alpha_t^2)(E_r[x_1 | x] - E[x_1 | x])`` with both
    expectations over the same N detached MFM draws (MATH.md section 6). No gradient of the
    reward or the model: black-box rewards work. Singular where ``alpha_t = 0`` (t = 1), where
    the steering coefficient vanishes and the engine does not call it.

    Shapes: ``t`` ``[B]``, ``x`` ``[B, *D]``; gradient ``[B, *D]``, value ``[B]``.
    Cost per context and call of :meth:`grad_value` or :meth:`value`, with N particles and K
    posterior steps: NK MFM forwards and N reward calls, ``N + NK`` NFE (``2N`` for K = 1; with the
    steering engine's base drift, ``1 + 2N`` a step).
    """

    name = "mfm-gf"
    Options = MFMGradientFreeOptions
    requires_differentiable_reward = False

    def _draws_and_rewards(self, *, t: Tensor, x: Tensor, context: SteeringContext) -> tuple[Tensor, Tensor]:
        n = self.options.particles
        with torch.no_grad():
            eps = _noise((x.shape[0], n, *x.shape[1:]), like=x, generator=context.generator)
            draws = context.model.sample_posterior(
                t=t, x=x.detach(), n=n, steps=self.options.posterior_steps, cond=context.cond, eps=eps
            )
            return draws, _rewards(draws, context)

    def grad_value(self, *, t: Tensor, x: Tensor, context: SteeringContext) -> Tensor:
        """``(beta_t / alpha_t^2) (sum_i softmax(r)_i x_1^i - mean_i x_1^i)``, ``[B, *D]``."""
        draws, r = self._draws_and_rewards(t=t, x=x, context=context)
        w = torch.softmax(r, dim=1).reshape(*r.shape, *([1] * (draws.ndim - 2)))
        diff = (w * draws).sum(1) - draws.mean(1)
        interp = context.model.interpolant
        t_ = batch_times(t, x.shape[0], x)
        return pad_time(interp.beta(t_) / interp.alpha(t_) ** 2, x) * diff

    def value(self, *, t: Tensor, x: Tensor, context: SteeringContext) -> Tensor:
        """``logsumexp_i r(x_1^i) - log N``, ``[B]``."""
        return _log_mean_exp(self._draws_and_rewards(t=t, x=x, context=context)[1])


class DPS(ValueEstimator):
    """DPS (baseline): ``grad V_t(x) = grad_x r(D_t(x))``, a point-mass posterior at the denoiser.

    ``D_t(x)`` comes from the base drift ``b_t(x)`` (the model's ``t = 0`` slice) by the
    interpolant's conversion, and the gradient back-propagates through the reward and the base
    network. Inside the steering engine, the drift it returns is that same forward (no second base
    call). Needs a differentiable reward. Not consistent: it ignores the posterior's spread.

    Shapes: ``t`` ``[B]``, ``x`` ``[B, *D]``; gradient ``[B, *D]``, value ``[B]``.
    Cost per context and call of :meth:`grad_value` (or :meth:`drift_and_grad_value`): 1 base
    forward, 1 reward call, a backward through the base: 4 NFE (``4K`` over K steering steps).
    :meth:`value` (``r(D_t(x))``): 2 NFE.
    """

    name = "dps"
    requires_differentiable_reward = True

    def drift_and_grad_value(self, *, t: Tensor, x: Tensor, context: SteeringContext) -> tuple[Tensor, Tensor]:
        """The base drift ``b_t(x)`` and ``grad_x r(D_t(x))`` from one base forward, both detached."""
        model = context.model
        t_ = batch_times(t, x.shape[0], x)
        with torch.enable_grad():
            x_ = x.detach().requires_grad_(True)
            drift = model.drift(t=t_, x=x_, cond=context.cond)
            denoised = model.interpolant.denoiser_from_velocity(t=t_, x=x_, velocity=drift)
            r = context.reward(denoised, cond=context.cond)
            (grad,) = torch.autograd.grad(r.sum(), [x_])
        return drift.detach(), grad

    def grad_value(self, *, t: Tensor, x: Tensor, context: SteeringContext) -> Tensor:
        """``grad_x r(D_t(x))``, ``[B, *D]``."""
        return self.drift_and_grad_value(t=t, x=x, context=context)[1]

    def value(self, *, t: Tensor, x: Tensor, context: SteeringContext) -> Tensor:
        """``r(D_t(x))``, ``[B]``."""
        with torch.no_grad():
            return context.reward(context.model.denoise(t=t, x=x, cond=context.cond), cond=context.cond)


@attrs.frozen(kw_only=True)
class GlassMonteCarloOptions:
    """Options of :class:`GlassMonteCarlo`.

    Attributes:
        particles: posterior draws N per context.
        steps: Euler steps S of the GLASS posterior ODE over the inner time s in [0, 1].
    """

    particles: int = attrs.field(default=16, validator=_positive_int)
    steps: int = attrs.field(default=8, validator=_positive_int)


class GlassMonteCarlo(_PosteriorMonteCarlo):
    """GLASS-MC: MFM-G with the posterior draws from the GLASS ODE on the base model instead of an MFM.

    Each draw integrates ``dy/ds = bbar_s(y; t, x)`` (MATH.md section 3, the conditional drift
    from the base denoiser ``D_{t*}(x*)``) from ``y_0 = eps_i`` with S explicit Euler steps on a
    uniform grid; the draws are differentiable in ``x`` (through the fusion ``x*``), and
    ``grad V = grad_x log (1/N) sum_i exp r(y_1^i(x))``, the noise fixed. A training-free
    rival of :class:`MFMGradient`: only the base model is needed. Needs a differentiable reward.

    Shapes: ``t`` ``[B]``, ``x`` ``[B, *D]``; gradient ``[B, *D]``, value ``[B]``.
    Cost per context and call of :meth:`grad_value`, with N particles and S steps: NS base
    forwards, N reward calls and a backward through the NS base outputs: ``N + 3NS`` NFE.
    :meth:`value`: ``NS + N`` NFE.
    """

    name = "glass-mc"
    Options = GlassMonteCarloOptions

    def draws(self, *, t: Tensor, x: Tensor, context: SteeringContext) -> Tensor:
        """GLASS posterior draws ``[B, N, *D]`` by S Euler steps, differentiable in ``x``."""
        model, n = context.model, self.options.particles
        batch, shape = x.shape[0], x.shape[1:]
        t_rep = batch_times(t, batch, x).repeat_interleave(n)
        x_rep = x.repeat_interleave(n, dim=0)
        cond = context.cond.repeat_interleave(n) if context.cond is not None else None

        def denoiser(t_star: Tensor, x_star: Tensor) -> Tensor:
            return model.denoise(t=t_star, x=x_star, cond=cond)

        drift = glass_drift(denoiser=denoiser, interpolant=model.interpolant, inner=model.inner, t=t_rep, x=x_rep)
        y = _noise((batch * n, *shape), like=x, generator=context.generator)
        grid = uniform_grid(0.0, 1.0, self.options.steps, dtype=x.dtype, device=x.device)
        for k in range(self.options.steps):
            s = grid[k].expand(batch * n)
            y = y + (grid[k + 1] - grid[k]) * drift(t=s, x=y)
        return y.reshape(batch, n, *shape)


POSTERIOR_ESTIMATORS: tuple[type, ...] = (MFMGradient, MFMGradientFree, DPS, GlassMonteCarlo)
