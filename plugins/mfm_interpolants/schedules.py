"""Closed-form noise-to-data schedules."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from mfm_framework.interfaces import Interpolant

__all__ = ["LinearInterpolant", "TrigonometricInterpolant"]


class LinearInterpolant(Interpolant):
    """Linear schedule ``alpha_t = 1 - t``, ``beta_t = t`` (rectified flow; the paper's choice).

    ``snr_t = t^2 / (1 - t)^2``, so ``time_from_snr(q) = sqrt(q) / (1 + sqrt(q))``, and the
    steering coefficient is ``g_t = (1 - t) / t``. No network evaluations.
    """

    name = "linear"

    def alpha(self, t: Tensor) -> Tensor:
        return 1 - t

    def beta(self, t: Tensor) -> Tensor:
        return t

    def dalpha(self, t: Tensor) -> Tensor:
        return torch.full_like(t, -1.0)

    def dbeta(self, t: Tensor) -> Tensor:
        return torch.ones_like(t)

    def time_from_snr(self, snr: Tensor) -> Tensor:
        # 1 / (1 + 1/sqrt(q)) maps q = 0 to 0 and q = inf to 1 without an inf/inf.
        return 1 / (1 + 1 / snr.sqrt())


class TrigonometricInterpolant(Interpolant):
    """Trigonometric (variance-preserving) schedule ``alpha_t = cos(pi t / 2)``, ``beta_t = sin(pi t / 2)``.

    ``snr_t = tan^2(pi t / 2)``, so ``time_from_snr(q) = (2 / pi) atan(sqrt(q))``, and
    ``g_t = (pi / 2) cos(pi t / 2) / sin(pi t / 2)``. No network evaluations.
    """

    name = "trigonometric"

    def alpha(self, t: Tensor) -> Tensor:
        # sin(pi (1 - t) / 2) rather than cos(pi t / 2): exactly 0 at t = 1, also in float32
        return torch.sin(0.5 * math.pi * (1 - t))

    def beta(self, t: Tensor) -> Tensor:
        return torch.sin(0.5 * math.pi * t)

    def dalpha(self, t: Tensor) -> Tensor:
        return -0.5 * math.pi * torch.sin(0.5 * math.pi * t)

    def dbeta(self, t: Tensor) -> Tensor:
        return 0.5 * math.pi * torch.sin(0.5 * math.pi * (1 - t))

    def time_from_snr(self, snr: Tensor) -> Tensor:
        return torch.atan(snr.sqrt()) * (2 / math.pi)
