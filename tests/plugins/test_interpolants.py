"""Closed forms of the first-party interpolants (MATH.md sections 1, 3 and 6)."""

from __future__ import annotations

import math

import pytest
import torch
from mfm_interpolants import LinearInterpolant, TrigonometricInterpolant
from torch import Tensor

F64 = torch.float64
B = 64


def _pad(t: Tensor, like: Tensor) -> Tensor:
    return t.reshape(t.shape[0], *([1] * (like.ndim - 1)))


@pytest.fixture
def gen() -> torch.Generator:
    return torch.Generator().manual_seed(20260123)


def _times(gen: torch.Generator, lo: float = 0.02, hi: float = 0.98) -> Tensor:
    return lo + (hi - lo) * torch.rand(B, generator=gen, dtype=F64)


def _states(gen: torch.Generator) -> Tensor:
    return torch.randn(B, 3, 2, generator=gen, dtype=F64)


def _gaussian_denoiser(ip, t: Tensor, x: Tensor, m: Tensor, sd: float) -> Tensor:
    a, b = _pad(ip.alpha(t), x), _pad(ip.beta(t), x)
    return m + b * sd**2 * (x - b * m) / (b**2 * sd**2 + a**2)


# --------------------------------------------------------------------------- linear
def test_linear_glass_fusion_closed_form(gen: torch.Generator) -> None:
    """``t* = sqrt(den) / (sqrt(den) + (1-s)(1-t))``, ``x* = t* (t (1-s)^2 x + s (1-t)^2 y) / den``."""
    ip = LinearInterpolant()
    t, s, x, y = _times(gen), _times(gen), _states(gen), _states(gen)
    den = t**2 * (1 - s) ** 2 + s**2 * (1 - t) ** 2
    t_star = den.sqrt() / (den.sqrt() + (1 - s) * (1 - t))
    x_star = _pad(t_star / den, x) * (_pad(t * (1 - s) ** 2, x) * x + _pad(s * (1 - t) ** 2, y) * y)
    fused = ip.glass_fusion(t=t, x=x, s=s, y=y)
    torch.testing.assert_close(fused.t_star, t_star, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(fused.x_star, x_star, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(fused.snr, t**2 / (1 - t) ** 2 + s**2 / (1 - s) ** 2, rtol=1e-12, atol=0)


def test_linear_glass_fusion_scalar_times(gen: torch.Generator) -> None:
    """Float times broadcast over the batch like per-sample times."""
    ip = LinearInterpolant()
    x, y = _states(gen), _states(gen)
    scalar = ip.glass_fusion(t=0.3, x=x, s=0.6, y=y)
    batched = ip.glass_fusion(t=torch.full((B,), 0.3, dtype=F64), x=x, s=torch.full((B,), 0.6, dtype=F64), y=y)
    torch.testing.assert_close(scalar.x_star, batched.x_star, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(scalar.t_star.expand(B), batched.t_star, rtol=1e-12, atol=1e-12)


def test_linear_steering_coefficient(gen: torch.Generator) -> None:
    """``g_t = (1 - t) / t``; the steered SDE drift ``b + g score = 2 b - x / t``."""
    ip = LinearInterpolant()
    t = _times(gen)
    g = ip.steering_coefficient(t)
    torch.testing.assert_close(g, (1 - t) / t, rtol=1e-12, atol=0)
    x, score = _states(gen), _states(gen)
    b = ip.velocity_from_score(t=t, x=x, score=score)
    torch.testing.assert_close(b + _pad(g, x) * score, 2 * b - x / _pad(t, x), rtol=1e-10, atol=1e-10)


def test_linear_conversions_closed_form(gen: torch.Generator) -> None:
    """``b = (D - x) / (1 - t)`` and ``D = x + (1 - t) b``; ``time_from_snr(q) = sqrt(q) / (1 + sqrt(q))``."""
    ip = LinearInterpolant()
    t, x, d = _times(gen), _states(gen), _states(gen)
    tp = _pad(t, x)
    b = ip.velocity_from_denoiser(t=t, x=x, denoiser=d)
    torch.testing.assert_close(b, (d - x) / (1 - tp), rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(ip.denoiser_from_velocity(t=t, x=x, velocity=b), x + (1 - tp) * b, rtol=1e-10, atol=1e-12)
    q = ip.snr(t)
    torch.testing.assert_close(q, t**2 / (1 - t) ** 2, rtol=1e-12, atol=0)
    torch.testing.assert_close(ip.time_from_snr(q), q.sqrt() / (1 + q.sqrt()), rtol=1e-12, atol=0)


# --------------------------------------------------------------------------- trigonometric
def test_trigonometric_schedule_closed_form(gen: torch.Generator) -> None:
    """``snr = tan^2(pi t / 2)``, its inverse ``(2 / pi) atan(sqrt q)``, ``g = (pi/2) cot(pi t / 2)``."""
    ip = TrigonometricInterpolant()
    t = _times(gen)
    q = ip.snr(t)
    torch.testing.assert_close(q, torch.tan(math.pi * t / 2) ** 2, rtol=1e-12, atol=0)
    torch.testing.assert_close(ip.time_from_snr(q), (2 / math.pi) * torch.atan(q.sqrt()), rtol=1e-12, atol=0)
    torch.testing.assert_close(ip.steering_coefficient(t), (math.pi / 2) / torch.tan(math.pi * t / 2), rtol=1e-12, atol=0)
    # Variance preserving: alpha^2 + beta^2 = 1.
    torch.testing.assert_close(ip.alpha(t) ** 2 + ip.beta(t) ** 2, torch.ones_like(t), rtol=0, atol=1e-14)


def test_trigonometric_and_linear_fuse_to_the_same_posterior(gen: torch.Generator) -> None:
    """The same two observations, parametrised by either outer schedule, fuse to the same posterior.

    A context observed at linear time ``t`` is the observation at trigonometric time ``t'`` with
    the same SNR, rescaled to ``x' = beta'_{t'} x / t``. Fusing it with an inner state on the
    linear schedule must give the same SNR*, the same ``xhat = x* / beta_{t*}`` and the same
    posterior mean of Gaussian data, whichever outer schedule does the fusion.
    """
    lin, trig = LinearInterpolant(), TrigonometricInterpolant()
    t, s, x, y = _times(gen), _times(gen), _states(gen), _states(gen)
    t_trig = trig.time_from_snr(lin.snr(t))
    x_trig = _pad(trig.beta(t_trig) / lin.beta(t), x) * x
    by_lin = lin.glass_fusion(t=t, x=x, s=s, y=y)
    by_trig = trig.glass_fusion(t=t_trig, x=x_trig, s=s, y=y, inner=lin)
    torch.testing.assert_close(by_trig.snr, by_lin.snr, rtol=1e-9, atol=0)
    torch.testing.assert_close(trig.snr(by_trig.t_star), lin.snr(by_lin.t_star), rtol=1e-8, atol=0)
    xhat_lin = by_lin.x_star / _pad(lin.beta(by_lin.t_star), x)
    xhat_trig = by_trig.x_star / _pad(trig.beta(by_trig.t_star), x)
    torch.testing.assert_close(xhat_trig, xhat_lin, rtol=1e-9, atol=1e-10)
    m, sd = torch.randn(3, 2, generator=gen, dtype=F64), 0.6
    torch.testing.assert_close(
        _gaussian_denoiser(trig, by_trig.t_star, by_trig.x_star, m, sd),
        _gaussian_denoiser(lin, by_lin.t_star, by_lin.x_star, m, sd),
        rtol=1e-9,
        atol=1e-10,
    )


def test_mixed_inner_schedule_adds_its_own_snr(gen: torch.Generator) -> None:
    """Linear context with a trigonometric inner schedule: ``SNR* = snr_lin(t) + snr_trig(s)``."""
    lin, trig = LinearInterpolant(), TrigonometricInterpolant()
    t, s, x, y = _times(gen), _times(gen), _states(gen), _states(gen)
    fused = lin.glass_fusion(t=t, x=x, s=s, y=y, inner=trig)
    snr = lin.snr(t) + trig.snr(s)
    torch.testing.assert_close(fused.snr, snr, rtol=1e-10, atol=0)
    xhat = (_pad(lin.beta(t) / lin.alpha(t) ** 2, x) * x + _pad(trig.beta(s) / trig.alpha(s) ** 2, y) * y) / _pad(snr, x)
    torch.testing.assert_close(fused.x_star, _pad(lin.beta(fused.t_star), x) * xhat, rtol=1e-9, atol=1e-10)
