"""Closed-form references of the conformance suites: Gaussian data and its exact drifts.

For data ``x_1 ~ N(m, s^2 I)`` everything the suites compare against is closed form:

- :class:`GaussianData`: a data source with exact samples, marginals and posteriors
  (:class:`~mfm_framework.interfaces.ExactData`);
- :func:`fused_posterior`: the law of ``x_1`` given both the context ``x_t = x`` and the inner
  state ``y_s = y``;
- :class:`ExactDriftTarget`: the exact conditional drift ``bbar_s(y; t, x)`` (MATH.md sections 2
  and 3) and :class:`DataPairTarget`: its unbiased data-pair estimate ``dabar_s eps + dbbar_s x_1``;
- :class:`CosineSchedule`: the trigonometric schedule of MATH.md section 1 (the linear one is
  :class:`~mfm_framework.testing.exact.LinearSchedule`).

None of them is a registered component, so the core's suites name no first-party component. The
exact flow map of the same law is :class:`~mfm_framework.testing.exact.GaussianFlowMapBackbone`.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import attrs
import torch
from torch import Tensor

from mfm_framework.interfaces import DataBatch, DataSource, DiagonalTarget, Interpolant
from mfm_framework.interfaces._time import as_time, pad_time
from mfm_framework.testing.exact import GaussianFlowMapOptions

__all__ = [
    "CosineSchedule",
    "DataPairTarget",
    "ExactDriftTarget",
    "GaussianData",
    "GaussianDataOptions",
    "fused_posterior",
]


# --------------------------------------------------------------------------- schedules


class CosineSchedule(Interpolant):
    """``alpha_t = cos(pi t / 2)``, ``beta_t = sin(pi t / 2)`` (trigonometric; not registered)."""

    name = "test-cosine-schedule"

    def alpha(self, t: Tensor) -> Tensor:
        return torch.sin(0.5 * math.pi * (1 - t))  # exactly 0 at t = 1

    def beta(self, t: Tensor) -> Tensor:
        return torch.sin(0.5 * math.pi * t)

    def dalpha(self, t: Tensor) -> Tensor:
        return -0.5 * math.pi * torch.sin(0.5 * math.pi * t)

    def dbeta(self, t: Tensor) -> Tensor:
        return 0.5 * math.pi * torch.sin(0.5 * math.pi * (1 - t))

    def time_from_snr(self, snr: Tensor) -> Tensor:
        return torch.atan(snr.sqrt()) * (2 / math.pi)


# --------------------------------------------------------------------------- Gaussian data


@attrs.frozen(kw_only=True)
class GaussianDataOptions:
    """Options of :class:`GaussianData`.

    Attributes:
        mean: data mean ``m`` (each coordinate).
        std: data standard deviation ``s`` (> 0).
        shape: the shape ``D`` of one example.
    """

    mean: float = 0.5
    std: float = attrs.field(default=0.7, validator=attrs.validators.gt(0))
    shape: tuple[int, ...] = (2,)


def _marginal(
    options: GaussianDataOptions, t: Tensor | float, x: Tensor, interpolant: Interpolant
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """``alpha_t``, ``beta_t`` (padded), the variance ``beta_t^2 s^2 + alpha_t^2`` of ``x_t`` and ``x - beta_t m``."""
    t = as_time(t, x)
    a, b = pad_time(interpolant.alpha(t), x), pad_time(interpolant.beta(t), x)
    var = b**2 * options.std**2 + a**2
    return a, b, var, x - b * options.mean


class GaussianData(DataSource):
    """Isotropic Gaussian data ``x_1 ~ N(m, s^2 I)`` of any shape, with every exact quantity.

    Implements :class:`~mfm_framework.interfaces.ExactData`: exact samples, and under any
    interpolant the denoiser ``m + beta s^2 (x - beta m) / v``, the score ``-(x - beta m) / v``,
    the velocity and the Gaussian posterior ``N(mu, c^2 I)`` with ``v = beta^2 s^2 + alpha^2``,
    ``c^2 = s^2 alpha^2 / v`` (the same law as :class:`GaussianFlowMapBackbone`). States are
    ``[B, *D]``, times scalars or ``[B]``. Samples come in ``dtype`` (float64 by default).
    Cost: no network evaluations.
    """

    name = "gaussian-exact"
    Options = GaussianDataOptions

    def __init__(self, options: GaussianDataOptions | None = None, *, dtype: torch.dtype = torch.float64) -> None:
        super().__init__(options)
        self.dtype = dtype

    @property
    def data_shape(self) -> tuple[int, ...]:
        return tuple(self.options.shape)

    def sample(self, n: int, *, generator: torch.Generator | None = None) -> DataBatch:
        """``n`` i.i.d. draws, ``x_1`` ``[n, *D]``; no labels."""
        eps = torch.randn(n, *self.data_shape, generator=generator, dtype=self.dtype)
        return DataBatch(x_1=self.options.mean + self.options.std * eps)

    def batches(
        self, *, batch_size: int, generator: torch.Generator, rank: int = 0, world_size: int = 1
    ) -> Iterator[DataBatch]:
        """Endless batches: each step draws the global batch and rank ``r`` keeps its rows."""
        if not 0 <= rank < world_size:
            raise ValueError(f"rank must be in [0, world_size), got rank={rank}, world_size={world_size}")
        rows = slice(rank * batch_size, (rank + 1) * batch_size)
        while True:
            yield DataBatch(x_1=self.sample(batch_size * world_size, generator=generator).x_1[rows])

    def posterior(self, *, t: Tensor | float, x: Tensor, interpolant: Interpolant) -> tuple[Tensor, Tensor]:
        """Mean ``[B, *D]`` and variance (broadcastable) of ``p_{1|t}(. | x)``."""
        a, b, var, resid = _marginal(self.options, t, x, interpolant)
        s2 = self.options.std**2
        return self.options.mean + b * s2 * resid / var, s2 * a**2 / var

    def denoiser(self, *, t: Tensor | float, x: Tensor, interpolant: Interpolant) -> Tensor:
        """``D_t(x) = E[x_1 | x_t = x]``, ``[B, *D]``."""
        return self.posterior(t=t, x=x, interpolant=interpolant)[0]

    def score(self, *, t: Tensor | float, x: Tensor, interpolant: Interpolant) -> Tensor:
        """``grad log p_t(x) = -(x - beta_t m) / v``, ``[B, *D]``."""
        _, _, var, resid = _marginal(self.options, t, x, interpolant)
        return -resid / var

    def velocity(self, *, t: Tensor | float, x: Tensor, interpolant: Interpolant) -> Tensor:
        """``b_t(x) = dalpha_t E[x_0 | x] + dbeta_t D_t(x)``, ``[B, *D]``."""
        a, _, var, resid = _marginal(self.options, t, x, interpolant)
        tt = as_time(t, x)
        da, db = pad_time(interpolant.dalpha(tt), x), pad_time(interpolant.dbeta(tt), x)
        return da * a * resid / var + db * self.denoiser(t=t, x=x, interpolant=interpolant)

    def posterior_sample(
        self, *, t: Tensor | float, x: Tensor, n: int, interpolant: Interpolant, generator: torch.Generator | None = None
    ) -> Tensor:
        """``n`` draws from ``p_{1|t}(. | x)`` per context, ``[B, n, *D]``."""
        mean, var = self.posterior(t=t, x=x, interpolant=interpolant)
        eps = torch.randn(x.shape[0], n, *x.shape[1:], generator=generator, dtype=x.dtype)
        return mean[:, None] + var.sqrt().unsqueeze(1) * eps

    def posterior_log_prob(self, *, t: Tensor | float, x: Tensor, x_1: Tensor, interpolant: Interpolant) -> Tensor:
        """``log p_{1|t}(x_1 | x)`` for ``x_1`` ``[B, M, *D]``: ``[B, M]`` (undefined where ``alpha_t = 0``)."""
        mean, var = self.posterior(t=t, x=x, interpolant=interpolant)
        var = var.expand_as(mean).unsqueeze(1)
        log_n = -0.5 * ((x_1 - mean[:, None]) ** 2 / var + var.log() + math.log(2 * math.pi))
        return log_n.reshape(*log_n.shape[:2], -1).sum(-1)


def fused_posterior(
    options: GaussianDataOptions | GaussianFlowMapOptions,
    *,
    t: Tensor,
    x: Tensor,
    s: Tensor,
    y: Tensor,
    outer: Interpolant,
    inner: Interpolant,
) -> tuple[Tensor, Tensor]:
    """The law ``N(mean, var I)`` of ``x_1`` given ``x_t = x`` and ``y_s = y`` (Gaussian data).

    Precision weighting of three observations of ``x_1`` (the prior ``N(m, s^2)``, the context
    and the inner state), written multiplied through by ``s^2 alpha_t^2 abar_s^2`` so that it stays
    finite at t = 1 or s = 1 (where the observation is exact):
    ``mean = (m alpha_t^2 abar_s^2 + s^2 (beta_t abar_s^2 x + bbar_s alpha_t^2 y)) / P``,
    ``var = s^2 alpha_t^2 abar_s^2 / P`` with
    ``P = alpha_t^2 abar_s^2 + s^2 (beta_t^2 abar_s^2 + bbar_s^2 alpha_t^2)``.

    Args:
        options: the data law (``mean``, ``std``).
        t, s: ``[B]``; x, y: ``[B, *D]``.
        outer, inner: the schedules of ``x_t`` and ``y_s``.

    Returns:
        ``mean`` ``[B, *D]`` and ``var`` ``[B, 1, ...]``.
    """
    a2, b = pad_time(outer.alpha(t), x) ** 2, pad_time(outer.beta(t), x)
    ab2, bb = pad_time(inner.alpha(s), y) ** 2, pad_time(inner.beta(s), y)
    s2, m = options.std**2, options.mean
    den = a2 * ab2 + s2 * (b**2 * ab2 + bb**2 * a2)
    return (m * a2 * ab2 + s2 * (b * ab2 * x + bb * a2 * y)) / den, s2 * a2 * ab2 / den


class ExactDriftTarget(DiagonalTarget):
    """The exact conditional drift ``bbar_s(y; t, x)`` of Gaussian data (MATH.md sections 2 and 3).

    ``dabar_s (y - bbar_s Dhat) / abar_s + dbbar_s Dhat`` with ``Dhat = E[x_1 | y_s = y, x_t = x]``
    from :func:`fused_posterior`; it ignores ``eps`` and ``x_1``. :meth:`prepare` takes the outer
    schedule from the model. Undefined at s = 1. Shapes ``[B, *D]``. Cost: no network evaluations.
    """

    name = "test-exact-drift"
    Options = GaussianDataOptions

    def __init__(self, options: GaussianDataOptions | None = None) -> None:
        super().__init__(options)
        self.outer: Interpolant | None = None

    def prepare(self, *, model: Any, data: Any, device: torch.device) -> None:
        self.outer = model.interpolant

    def drift(
        self, *, s: Tensor, y: Tensor, t: Tensor, x: Tensor, eps: Tensor, x_1: Tensor, inner: Any, cond: Tensor | None = None
    ) -> Tensor:
        if self.outer is None:
            raise RuntimeError("ExactDriftTarget.prepare() must be called before drift()")
        with torch.no_grad():
            dhat, _ = fused_posterior(self.options, t=t, x=x, s=s, y=y, outer=self.outer, inner=inner)
            ab, bb = pad_time(inner.alpha(s), y), pad_time(inner.beta(s), y)
            dab, dbb = pad_time(inner.dalpha(s), y), pad_time(inner.dbeta(s), y)
            return dab * (y - bb * dhat) / ab + dbb * dhat


class DataPairTarget(DiagonalTarget):
    """The data pair's conditional velocity ``dabar_s eps + dbbar_s x_1``: unbiased for ``bbar_s``.

    Shapes ``[B, *D]``. Cost: no network evaluations.
    """

    name = "test-data-pairs"

    def drift(
        self, *, s: Tensor, y: Tensor, t: Tensor, x: Tensor, eps: Tensor, x_1: Tensor, inner: Any, cond: Tensor | None = None
    ) -> Tensor:
        return inner.velocity_target(x_0=eps, x_1=x_1, t=s).detach()
