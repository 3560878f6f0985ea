"""Closed forms and test doubles shared by the steering tests.

Gaussian data ``N(m 1, s^2 I)`` under linear schedules (outer and inner), and a quadratic reward
``r(x_1) = -(x_1 - c)^T A (x_1 - c) / 2``. Everything is closed form: the posterior at ``(t, x)`` is
``N(mu, c2 I)`` with ``mu = (a^2 m + b s^2 x) / den``, ``c2 = s^2 a^2 / den``, ``den = a^2 + b^2 s^2``,
so with ``M = (I + c2 A)^-1 A``:

    V_t(x)      = -(mu - c)^T M (mu - c) / 2 - logdet(I + c2 A) / 2
    grad V_t(x) = -(b s^2 / den) M (mu - c)

and the tilted law is ``N(m_r, C_r)``, ``C_r = (I / s^2 + A)^-1``, ``m_r = C_r (m / s^2 + A c)``;
its marginal at ``t`` is ``N(b m_r, b^2 C_r + a^2 I)``.

The model, the quadratic reward and the closed forms of ``V`` and ``grad V`` live in the public
:mod:`mfm_framework.testing.exact` (the value-estimator conformance suite uses them too); this
module keeps the names the tests import.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from mfm_framework.interfaces import Backbone, SteeringContext, ValueEstimator
from mfm_framework.kinds import kind_by_name
from mfm_framework.model import MetaFlowMap
from mfm_framework.plugins import default_plugin_system
from mfm_framework.testing.exact import (
    LinearSchedule,
    gaussian_grad_log_value,
    gaussian_log_value,
    gaussian_meta_flow_map,
)
from mfm_framework.testing.exact import QuadraticTestReward as QuadraticReward
from mfm_framework.testing.exact import random_quadratic_reward as random_quadratic

__all__ = [
    "F64",
    "REG",
    "BlackBoxReward",
    "ExactGaussianValue",
    "QuadraticReward",
    "TinyNet",
    "comp",
    "exact_grad_value",
    "exact_value",
    "gaussian_model",
    "random_quadratic",
    "tilted_marginal_draw",
    "tilted_moments",
    "tiny_model",
]

F64 = torch.float64
REG = default_plugin_system().registry
_LINEAR = LinearSchedule()


def comp(kind: str, name: str, **options):
    """An installed component by kind and name, built with ``options``."""
    cls = REG.get(kind_by_name(kind), name).cls
    return cls(cls.Options(**options)) if options else cls()


def gaussian_model(*, dim: int = 2, mean: float = 0.5, std: float = 0.7) -> MetaFlowMap:
    """A float64 meta flow map whose maps are exact for data ``N(mean, std^2 I)`` (registered linear schedules)."""
    return gaussian_meta_flow_map(
        dim=dim, mean=mean, std=std, interpolant=comp("interpolant", "linear"), inner=comp("interpolant", "linear")
    )


class BlackBoxReward(QuadraticReward):
    """The same reward, declared non-differentiable."""

    name = "test-black-box"
    is_differentiable = False


def exact_value(reward: QuadraticReward, t: Tensor, x: Tensor, *, mean: float = 0.5, std: float = 0.7) -> Tensor:
    """``V_t(x)``, ``[B]``."""
    return gaussian_log_value(form=reward.closed_form(), t=t, x=x, mean=mean, std=std, interpolant=_LINEAR)


def exact_grad_value(reward: QuadraticReward, t: Tensor, x: Tensor, *, mean: float = 0.5, std: float = 0.7) -> Tensor:
    """``grad V_t(x)``, ``[B, D]``."""
    return gaussian_grad_log_value(form=reward.closed_form(), t=t, x=x, mean=mean, std=std, interpolant=_LINEAR)


def tilted_moments(reward: QuadraticReward, *, dim: int, mean: float = 0.5, std: float = 0.7) -> tuple[Tensor, Tensor]:
    """Mean ``[D]`` and covariance ``[D, D]`` of ``p_1 exp(r)``."""
    eye = torch.eye(dim, dtype=F64)
    cov = torch.linalg.inv(eye / std**2 + reward.a)
    return cov @ (torch.full((dim,), mean, dtype=F64) / std**2 + reward.a @ reward.c.detach()), cov


def tilted_marginal_draw(reward: QuadraticReward, t: float, n: int, generator: torch.Generator, *, dim: int) -> Tensor:
    """``n`` exact draws of ``p_t exp(V_t)`` (``x_t`` with ``x_1`` from the tilted law), ``[n, D]``."""
    m, cov = tilted_moments(reward, dim=dim)
    x1 = m + torch.randn(n, dim, generator=generator, dtype=F64) @ torch.linalg.cholesky(cov).T
    return (1 - t) * torch.randn(n, dim, generator=generator, dtype=F64) + t * x1


class ExactGaussianValue(ValueEstimator):
    """Test double: the closed-form ``V`` and ``grad V`` of :func:`exact_value` (reads the context's reward)."""

    name = "test-exact-gaussian"

    def grad_value(self, *, t: Tensor, x: Tensor, context: SteeringContext) -> Tensor:
        return exact_grad_value(context.reward, t, x)

    def value(self, *, t: Tensor, x: Tensor, context: SteeringContext) -> Tensor:
        return exact_value(context.reward, t, x)


class _CountBackward(torch.autograd.Function):
    """Identity that counts the rows of the gradients passing back through it."""

    @staticmethod
    def forward(ctx, v, counter):  # type: ignore[override]
        ctx.counter = counter
        return v.view_as(v)

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        ctx.counter["backward"] += grad.shape[0]
        return grad, None


class TinyNet(Backbone):
    """A small real network ``v(y, s, u, t, x)`` that counts the rows of its forwards and backwards itself."""

    name = "test-tiny"

    def __init__(self, *, dim: int = 2, width: int = 16, seed: int = 0) -> None:
        super().__init__(data_shape=(dim,))
        gen = torch.Generator().manual_seed(seed)
        self.inp = nn.Linear(2 * dim + 3, width)
        self.out = nn.Linear(width, dim)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(0.5 * torch.randn(p.shape, generator=gen))
        self.counter = {"forward": 0, "backward": 0}

    def forward(self, *, y: Tensor, s: Tensor, u: Tensor, t: Tensor, x: Tensor, cond: Tensor | None = None) -> Tensor:
        self.counter["forward"] += y.shape[0]
        h = torch.tanh(self.inp(torch.cat([y, x, s[:, None], u[:, None], t[:, None]], dim=1)))
        v = self.out(h)
        return _CountBackward.apply(v, self.counter) if torch.is_grad_enabled() else v


def tiny_model(*, dim: int = 2, seed: int = 0) -> MetaFlowMap:
    """A float64 meta flow map on :class:`TinyNet` (its parameters require grad)."""
    linear = comp("interpolant", "linear")
    return MetaFlowMap(TinyNet(dim=dim, seed=seed), linear).to(F64)
