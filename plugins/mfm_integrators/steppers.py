"""Fixed-grid integrators."""

from __future__ import annotations

import attrs
import torch
from torch import Tensor

from mfm_framework.interfaces import Diffusion, Drift, Integrator

__all__ = ["EulerIntegrator", "HeunIntegrator", "EulerMaruyamaIntegrator"]


def _pad(h: Tensor, like: Tensor) -> Tensor:
    return h.reshape(h.shape[0], *([1] * (like.ndim - 1)))


class EulerIntegrator(Integrator):
    """Explicit Euler for ODEs: ``x <- x + h f(t, x)``. Global order 1; 1 drift evaluation a step."""

    name = "euler"
    order = 1

    def step(
        self,
        drift: Drift,
        *,
        t: Tensor,
        t_next: Tensor,
        x: Tensor,
        diffusion: Diffusion | None,
        generator: torch.Generator | None,
        last: bool,
    ) -> tuple[Tensor, int]:
        return x + _pad(t_next - t, x) * drift(t=t, x=x), 1


@attrs.frozen(kw_only=True)
class HeunOptions:
    """Options of :class:`HeunIntegrator`.

    Attributes:
        euler_last_step: take a plain Euler step last, so the drift is never evaluated at the
            final time (useful when it is singular there, e.g. ``b_t`` at t = 1); lowers the order
            of the last step only.
    """

    euler_last_step: bool = False


class HeunIntegrator(Integrator):
    """Heun's method (explicit trapezoidal rule) for ODEs.

    ``x' = x + h f(t, x)``; ``x <- x + h (f(t, x) + f(t + h, x')) / 2``. Global order 2;
    2 drift evaluations a step (1 on an Euler last step).
    """

    name = "heun"
    order = 2
    Options = HeunOptions

    def step(
        self,
        drift: Drift,
        *,
        t: Tensor,
        t_next: Tensor,
        x: Tensor,
        diffusion: Diffusion | None,
        generator: torch.Generator | None,
        last: bool,
    ) -> tuple[Tensor, int]:
        h = _pad(t_next - t, x)
        f0 = drift(t=t, x=x)
        x_pred = x + h * f0
        if last and self.options.euler_last_step:
            return x_pred, 1
        return x + 0.5 * h * (f0 + drift(t=t_next, x=x_pred)), 2


@attrs.frozen(kw_only=True)
class EulerMaruyamaOptions:
    """Options of :class:`EulerMaruyamaIntegrator`.

    Attributes:
        noise_last_step: add the Brownian increment on the last step too; turn it off to return
            the mean of the last step (a common denoising choice at t = 1).
    """

    noise_last_step: bool = True


class EulerMaruyamaIntegrator(Integrator):
    """Euler-Maruyama for SDEs ``dx = f dt + sigma dW``: ``x <- x + h f + sigma sqrt(|h|) xi``.

    Weak order 1 (moments), strong order 1/2. Without a diffusion it is explicit Euler.
    1 drift evaluation a step (plus one diffusion evaluation, which is not a network call).
    """

    name = "euler-maruyama"
    order = 1
    stochastic = True
    Options = EulerMaruyamaOptions

    def step(
        self,
        drift: Drift,
        *,
        t: Tensor,
        t_next: Tensor,
        x: Tensor,
        diffusion: Diffusion | None,
        generator: torch.Generator | None,
        last: bool,
    ) -> tuple[Tensor, int]:
        h = _pad(t_next - t, x)
        x_next = x + h * drift(t=t, x=x)
        if diffusion is not None and (self.options.noise_last_step or not last):
            sigma = diffusion(t=t, x=x)
            if sigma.ndim == 1 and x.ndim > 1:
                sigma = _pad(sigma, x)
            xi = torch.randn(x.shape, generator=generator, dtype=x.dtype, device=x.device)
            x_next = x_next + sigma * h.abs().sqrt() * xi
        return x_next, 1
