"""Closed-form meta flow maps for tests: Gaussian data, whose flow maps are affine.

For data ``x_1 ~ N(m, s^2 I)`` and a context ``x_t = x``, the posterior is
``N(mu, c^2 I)`` with ``c^2 = s^2 alpha_t^2 / (alpha_t^2 + beta_t^2 s^2)`` and
``mu = (alpha_t^2 m + beta_t s^2 x) / (alpha_t^2 + beta_t^2 s^2)``. Along the inner schedule,
``y_s ~ N(bbar_s mu, sigma_s^2 I)`` with ``sigma_s^2 = abar_s^2 + bbar_s^2 c^2``, and the flow map
of the inner ODE is affine:

    X_{s,u}(y) = bbar_u mu + (sigma_u / sigma_s) (y - bbar_s mu).

:class:`GaussianFlowMapBackbone` returns the exact average velocity
``v_{s,u} = (X_{s,u}(y) - y) / (u - s)`` (the derivative on the diagonal); a consistency loss must
be (near) zero on it, and positive on a perturbed one (``bend``, ``scale``, ``shift`` options).
"""

from __future__ import annotations

from typing import Any

import attrs
import torch
from torch import Tensor

from mfm_framework.interfaces import Backbone
from mfm_framework.interfaces._time import pad_time

__all__ = ["GaussianFlowMapBackbone", "GaussianFlowMapOptions"]


@attrs.frozen(kw_only=True)
class GaussianFlowMapOptions:
    """Options of :class:`GaussianFlowMapBackbone`.

    Attributes:
        mean: data mean ``m`` (each coordinate).
        std: data standard deviation ``s``.
        scale: multiplies the velocity (1 = exact).
        shift: added to the velocity (0 = exact).
        bend: adds ``bend * (u - s)`` to the velocity: exact on the diagonal, but no longer a
            family of flow maps (it breaks the Eulerian, Lagrangian and semigroup conditions).
    """

    mean: float = 0.5
    std: float = 0.7
    scale: float = 1.0
    shift: float = 0.0
    bend: float = 0.0


class GaussianFlowMapBackbone(Backbone):
    """The exact average velocity of the meta flow map of Gaussian data ``N(mean, std^2 I)``.

    Needs the outer and inner interpolants (:meth:`bind`). Differentiable (autograd and forward
    mode) in every input. Shapes as :class:`~mfm_framework.interfaces.Backbone`. 1 NFE.
    """

    name = "gaussian-exact"
    Options = GaussianFlowMapOptions

    def __init__(self, options: GaussianFlowMapOptions | None = None, *, data_shape: tuple[int, ...], num_classes: int | None = None) -> None:
        super().__init__(options, data_shape=data_shape, num_classes=num_classes)
        self.dummy = torch.nn.Parameter(torch.zeros(()))  # so optimizers and .parameters() work
        self.outer: Any = None
        self.inner: Any = None

    def bind(self, *, interpolant: Any, inner: Any) -> GaussianFlowMapBackbone:
        """Set the outer and inner schedules; returns self."""
        self.outer, self.inner = interpolant, inner
        return self

    def posterior(self, *, t: Tensor, x: Tensor) -> tuple[Tensor, Tensor]:
        """Posterior mean ``[B, *D]`` and variance ``[B, 1, ...]`` of ``x_1`` given ``x_t = x``."""
        m, s2 = self.options.mean, self.options.std**2
        a2, b = pad_time(self.outer.alpha(t) ** 2, x), pad_time(self.outer.beta(t), x)
        den = a2 + b**2 * s2
        return (a2 * m + b * s2 * x) / den, s2 * a2 / den

    def exact_map(self, *, s: Tensor, u: Tensor, y: Tensor, t: Tensor, x: Tensor) -> Tensor:
        """``X_{s,u}(y; t, x)``, ``[B, *D]``."""
        mu, c2 = self.posterior(t=t, x=x)
        sig_s, sig_u = self._sigma(s, c2, y), self._sigma(u, c2, y)
        bs, bu = pad_time(self.inner.beta(s), y), pad_time(self.inner.beta(u), y)
        return bu * mu + sig_u / sig_s * (y - bs * mu)

    def _sigma(self, r: Tensor, c2: Tensor, like: Tensor) -> Tensor:
        return (pad_time(self.inner.alpha(r) ** 2, like) + pad_time(self.inner.beta(r) ** 2, like) * c2).sqrt()

    def forward(self, *, y: Tensor, s: Tensor, u: Tensor, t: Tensor, x: Tensor, cond: Tensor | None = None) -> Tensor:
        mu, c2 = self.posterior(t=t, x=x)
        h = pad_time(u - s, y)
        small = h.abs() < 1e-6
        h_safe = torch.where(small, torch.ones_like(h), h)
        sig_s = self._sigma(s, c2, y)
        # off the diagonal: divided differences; on it: derivatives (same formula, limit h -> 0)
        db = (pad_time(self.inner.beta(u), y) - pad_time(self.inner.beta(s), y)) / h_safe
        dsig = (self._sigma(u, c2, y) - sig_s) / h_safe
        a, b = pad_time(self.inner.alpha(s), y), pad_time(self.inner.beta(s), y)
        da, dbeta = pad_time(self.inner.dalpha(s), y), pad_time(self.inner.dbeta(s), y)
        db = torch.where(small, dbeta, db)
        dsig = torch.where(small, (a * da + b * dbeta * c2) / sig_s, dsig)
        v = db * mu + dsig / sig_s * (y - b * mu)
        return self.options.scale * v + self.options.shift + self.options.bend * h
