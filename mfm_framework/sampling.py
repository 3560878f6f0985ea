"""Samplers built on a meta flow map (MATH.md section 5), with explicit step counts."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from mfm_framework.grids import uniform_grid
from mfm_framework.interfaces import IntegrationResult, Integrator, Interpolant
from mfm_framework.model import MetaFlowMap, batch_times

__all__ = ["kernel_sample", "ode_sample", "glass_posterior", "glass_drift"]


def kernel_sample(
    model: MetaFlowMap,
    *,
    n: int,
    steps: int,
    generator: torch.Generator | None = None,
    cond: Tensor | None = None,
) -> Tensor:
    """The K-step unconditional "kernel" sampler.

    On the grid ``t_k = k / K``: ``xh = X_{0,1}(eps_k; t_k, x)``, then re-noise
    ``x = alpha_{t_k+1} xi_k + beta_{t_k+1} xh``; the last step returns ``xh``. The first context
    (``t_0 = 0``) carries no information and is 0. Returns ``[n, *D]``. Cost: K NFE per sample.
    """
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    param = next(model.parameters())
    shape = (n, *model.data_shape)
    interp = model.interpolant
    x = torch.zeros(shape, device=param.device, dtype=param.dtype)
    for k in range(steps):
        t_k = torch.full((n,), k / steps, device=x.device, dtype=x.dtype)
        eps = torch.randn(shape, generator=generator, device=x.device, dtype=x.dtype)
        xh = model.jump(s=0.0, u=1.0, y=eps, t=t_k, x=x, cond=cond)
        if k == steps - 1:
            return xh
        xi = torch.randn(shape, generator=generator, device=x.device, dtype=x.dtype)
        x = interp.interpolate(x_0=xi, x_1=xh, t=torch.full((n,), (k + 1) / steps, device=x.device, dtype=x.dtype))
    raise AssertionError("unreachable")


def ode_sample(
    model: MetaFlowMap,
    *,
    n: int,
    integrator: Integrator,
    times: Tensor,
    generator: torch.Generator | None = None,
    cond: Tensor | None = None,
    keep_path: bool = False,
) -> IntegrationResult:
    """Integrate ``dx/dt = b_t(x) = v_{t,t}(x; 0, 0)`` from noise over ``times`` (e.g. 0 to 1).

    Returns the integrator's result (``x`` is ``[n, *D]``). Cost: the integrator's NFE.
    """
    param = next(model.parameters())
    x0 = torch.randn((n, *model.data_shape), generator=generator, device=param.device, dtype=param.dtype)
    return integrator.integrate(lambda *, t, x: model.drift(t=t, x=x, cond=cond), x=x0, times=times, keep_path=keep_path)


def glass_drift(
    *,
    denoiser: Callable[[Tensor, Tensor], Tensor],
    interpolant: Interpolant,
    inner: Interpolant,
    t: Tensor,
    x: Tensor,
    s_max: float = 0.999,
) -> Callable[..., Tensor]:
    """The conditional drift ``bbar_s(y; t, x)`` from an unconditional denoiser (MATH.md section 3).

    Args:
        denoiser: ``D(t*, x*)`` of the base model: times ``[B]``, states ``[B, *D]``.
        interpolant, inner: outer and inner schedules.
        t, x: contexts ``[B]``, ``[B, *D]``.
        s_max: the inner time is clamped to ``s_max`` (in the fusion and the conversion alike), since
            the drift divides by ``abar_s``; the drift at ``s = 1`` is its value at ``s_max``.

    Returns:
        ``drift(*, t=s, x=y)`` for an integrator over the inner time. 1 NFE of the base per call.
    """

    def drift(*, t: Tensor, x: Tensor) -> Tensor:  # noqa: A002 - integrator convention: (t, x) = (s, y)
        # The same clamped s in the fusion and in the conversion: with the unclamped s = 1 in the
        # fusion, t* = 1 and D = y exactly, so the drift at s = 1 came out as 0 (not its limit) and
        # integrators that evaluate the end of the grid (Heun) were biased to first order.
        s, y = t.clamp(max=s_max), x
        fusion = interpolant.glass_fusion(t=ctx_t, x=ctx_x, s=s, y=y, inner=inner)
        dhat = denoiser(fusion.t_star, fusion.x_star)
        return inner.velocity_from_denoiser(t=s, x=y, denoiser=dhat)

    ctx_t, ctx_x = t, x
    return drift


def glass_posterior(
    *,
    denoiser: Callable[[Tensor, Tensor], Tensor],
    interpolant: Interpolant,
    inner: Interpolant,
    t: Tensor | float,
    x: Tensor,
    n: int,
    steps: int,
    integrator: Integrator,
    generator: torch.Generator | None = None,
) -> Tensor:
    """The GLASS posterior baseline: integrate ``dy/ds = bbar_s(y; t, x)`` from ``y_0 = eps``.

    A training-free rival of the one-step MFM draw: it needs only the base model's denoiser.
    ``steps`` uniform steps of ``integrator`` over s in [0, 1]. Returns ``[B, n, *D]``.
    Cost: the integrator's NFE of the base model per draw (S for Euler).
    """
    batch, shape = x.shape[0], x.shape[1:]
    t_rep = batch_times(t, batch, x).repeat_interleave(n)
    x_rep = x.repeat_interleave(n, dim=0)
    eps = torch.randn((batch * n, *shape), generator=generator, device=x.device, dtype=x.dtype)
    drift = glass_drift(denoiser=denoiser, interpolant=interpolant, inner=inner, t=t_rep, x=x_rep)
    result = integrator.integrate(drift, x=eps, times=uniform_grid(0.0, 1.0, steps, dtype=x.dtype, device=x.device))
    return result.x.reshape(batch, n, *shape)
