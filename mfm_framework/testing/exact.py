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

Steering in closed form (MATH.md sections 6 and 8): for a reward in closed form (an
:class:`~mfm_framework.interfaces.ExpQuadraticMixture`) the value ``V_t(x)`` and its gradient under
Gaussian data are :func:`gaussian_log_value` and :func:`gaussian_grad_log_value`;
:func:`gaussian_meta_flow_map` builds the exact model, and :class:`QuadraticTestReward`,
:class:`LinearTestReward` and :class:`NonDifferentiableReward` are reward test doubles (not
registered components; the first two hold a parameter that requires grad, so that a leak shows).
"""

from __future__ import annotations

from typing import Any

import attrs
import torch
from torch import Tensor

from mfm_framework.interfaces import Backbone, ExpQuadraticMixture, Interpolant, Reward
from mfm_framework.interfaces._time import pad_time
from mfm_framework.model import MetaFlowMap, batch_times

__all__ = [
    "GaussianFlowMapBackbone",
    "GaussianFlowMapOptions",
    "LinearSchedule",
    "LinearTestReward",
    "NonDifferentiableReward",
    "QuadraticTestReward",
    "gaussian_grad_log_value",
    "gaussian_log_value",
    "gaussian_meta_flow_map",
    "gaussian_posterior",
    "random_quadratic_reward",
]


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


# --------------------------------------------------------------------------- steering in closed form
# Gaussian data N(m 1, s^2 I) and a reward in closed form (an ExpQuadraticMixture): the value
# V_t(x) = log E[exp r(x_1) | x_t = x] and its gradient are closed form (MATH.md sections 6, 8).


class LinearSchedule(Interpolant):
    """Test double of the linear schedule ``alpha_t = 1 - t``, ``beta_t = t`` (not a registered component).

    Lets the closed-form steering contexts be built without any plugin installed. No network
    evaluations.
    """

    name = "test-linear-schedule"

    def alpha(self, t: Tensor) -> Tensor:
        return 1 - t

    def beta(self, t: Tensor) -> Tensor:
        return t

    def dalpha(self, t: Tensor) -> Tensor:
        return torch.full_like(t, -1.0)

    def dbeta(self, t: Tensor) -> Tensor:
        return torch.ones_like(t)

    def time_from_snr(self, snr: Tensor) -> Tensor:
        return 1 / (1 + 1 / snr.sqrt())


class _TrainableGaussianFlowMapBackbone(GaussianFlowMapBackbone):
    """:class:`GaussianFlowMapBackbone` times a parameter ``gain`` (= 1, requires grad): exact, but a
    gradient that leaks to the model's weights shows in ``gain.grad``."""

    name = "gaussian-exact-trainable"

    def __init__(self, options: GaussianFlowMapOptions | None = None, *, data_shape: tuple[int, ...], num_classes: int | None = None) -> None:
        super().__init__(options, data_shape=data_shape, num_classes=num_classes)
        self.gain = torch.nn.Parameter(torch.ones(()))

    def forward(self, *, y: Tensor, s: Tensor, u: Tensor, t: Tensor, x: Tensor, cond: Tensor | None = None) -> Tensor:
        return self.gain * super().forward(y=y, s=s, u=u, t=t, x=x, cond=cond)


def gaussian_meta_flow_map(
    *,
    dim: int = 2,
    mean: float = 0.5,
    std: float = 0.7,
    interpolant: Interpolant | None = None,
    inner: Interpolant | None = None,
    trainable: bool = False,
    dtype: torch.dtype = torch.float64,
) -> MetaFlowMap:
    """A meta flow map whose maps are exact for data ``N(mean 1, std^2 I)`` in ``dim`` dimensions.

    Args:
        dim: the data dimension ``D`` (data shape ``(D,)``).
        mean: the data mean (each coordinate).
        std: the data standard deviation.
        interpolant: the outer schedule (default :class:`LinearSchedule`).
        inner: the inner schedule (default: the outer one).
        trainable: multiply the velocity by a parameter ``gain`` (= 1, requires grad), so that a
            gradient reaching the model's weights shows in ``model.backbone.gain.grad``. The
            backbone's other parameter (``dummy``) requires grad too but never enters the output.
        dtype: the model's floating dtype.

    Returns:
        a :class:`~mfm_framework.model.MetaFlowMap` (1 NFE per network call, as any).
    """
    outer = LinearSchedule() if interpolant is None else interpolant
    inner = outer if inner is None else inner
    cls = _TrainableGaussianFlowMapBackbone if trainable else GaussianFlowMapBackbone
    backbone = cls(GaussianFlowMapOptions(mean=mean, std=std), data_shape=(dim,))
    return MetaFlowMap(backbone.bind(interpolant=outer, inner=inner), outer, inner).to(dtype)


def gaussian_posterior(
    *, t: Tensor | float, x: Tensor, mean: float, std: float, interpolant: Interpolant
) -> tuple[Tensor, Tensor, Tensor]:
    """The posterior ``N(mu, c2 I)`` of ``x_1`` given ``x_t = x`` for data ``N(mean 1, std^2 I)``.

    Args:
        t: times, a scalar or ``[B]``.
        x: states ``[B, D]``.
        mean: the data mean (each coordinate).
        std: the data standard deviation.
        interpolant: the schedule defining ``x_t``.

    Returns:
        ``mu`` ``[B, D]``, ``c2`` ``[B, 1]`` and ``dmu = d mu / d x`` ``[B, 1]`` (a multiple of ``I``).
    """
    t_ = batch_times(t, x.shape[0], x)
    a2, b = interpolant.alpha(t_)[:, None] ** 2, interpolant.beta(t_)[:, None]
    den = a2 + b**2 * std**2
    return (a2 * mean + b * std**2 * x) / den, std**2 * a2 / den, b * std**2 / den


def _value_terms(form: ExpQuadraticMixture, mu: Tensor, c2: Tensor) -> tuple[Tensor, Tensor]:
    """Per term ``j``: ``log E exp(term_j(x_1))`` under ``N(mu, c2 I)``, ``[B, J]``, and ``(I + c2 P_j)^-1 (h_j - P_j mu)``, ``[B, J, D]``."""
    p, h, k = (v.detach().to(device=mu.device, dtype=mu.dtype) for v in (form.precision, form.shift, form.log_scale))
    p = 0.5 * (p + p.transpose(-1, -2))
    eye = torch.eye(mu.shape[1], dtype=mu.dtype, device=mu.device)
    mats = eye + c2[:, :, None, None] * p  # [B, J, D, D]
    g = h - torch.einsum("jik,bk->bji", p, mu)  # gradient of term_j at mu, [B, J, D]
    bg = torch.linalg.solve(mats, g.unsqueeze(-1)).squeeze(-1)
    r_mu = k + mu @ h.T - 0.5 * torch.einsum("bi,jik,bk->bj", mu, p, mu)
    sign, logdet = torch.linalg.slogdet(mats)
    if bool((sign <= 0).any()):
        raise ValueError("E[exp r(x_1) | x_t = x] is infinite here: I + c2 P_j is not positive definite")
    return r_mu + 0.5 * c2 * (g * bg).sum(-1) - 0.5 * logdet, bg


def gaussian_log_value(
    *, form: ExpQuadraticMixture, t: Tensor | float, x: Tensor, mean: float, std: float, interpolant: Interpolant
) -> Tensor:
    """The exact value ``V_t(x) = log E[exp r(x_1) | x_t = x]`` for data ``N(mean 1, std^2 I)``, ``[B]``.

    Per term of ``form`` (``r_j(x_1) = c_j - x_1^T P_j x_1 / 2 + h_j^T x_1``) under the posterior
    ``N(mu, c2 I)`` (:func:`gaussian_posterior`):
    ``log E exp r_j = r_j(mu) + (c2 / 2) g_j^T (I + c2 P_j)^-1 g_j - logdet(I + c2 P_j) / 2`` with
    ``g_j = h_j - P_j mu``, and ``V`` is their log-sum-exp. Computed in ``x``'s dtype.

    Args:
        form: the reward in closed form (``Reward.closed_form()``), ``D``-dimensional.
        t: times, a scalar or ``[B]``.
        x: states ``[B, D]``.
        mean: the data mean (each coordinate).
        std: the data standard deviation.
        interpolant: the schedule defining ``x_t``.

    Raises:
        ValueError: where the expectation is infinite (``I + c2 P_j`` not positive definite).
    """
    mu, c2, _ = gaussian_posterior(t=t, x=x, mean=mean, std=std, interpolant=interpolant)
    return _value_terms(form, mu, c2)[0].logsumexp(-1)


def gaussian_grad_log_value(
    *, form: ExpQuadraticMixture, t: Tensor | float, x: Tensor, mean: float, std: float, interpolant: Interpolant
) -> Tensor:
    """The exact ``grad_x V_t(x)`` for data ``N(mean 1, std^2 I)``, ``[B, D]`` (closed form, no autograd).

    ``grad V = (d mu / d x) sum_j softmax_j(log E exp r_j) (I + c2 P_j)^-1 (h_j - P_j mu)``, with
    ``d mu / d x = beta_t std^2 / (alpha_t^2 + beta_t^2 std^2)``. Arguments as
    :func:`gaussian_log_value`.
    """
    mu, c2, dmu = gaussian_posterior(t=t, x=x, mean=mean, std=std, interpolant=interpolant)
    terms, bg = _value_terms(form, mu, c2)
    return dmu * (torch.softmax(terms, dim=-1).unsqueeze(-1) * bg).sum(1)


class QuadraticTestReward(Reward):
    """Test double: ``r(x_1) = -(x_1 - c)^T A (x_1 - c) / 2`` on ``[B, D]``, returns ``[B]`` in ``x_1``'s dtype.

    ``c`` is an ``nn.Parameter`` that requires grad on purpose: a value estimator must never give it
    a ``.grad``. Counts the rows it is called on in :attr:`calls`. 1 NFE per call.

    Args:
        a: the symmetric matrix ``A`` ``[D, D]``.
        c: the centre ``[D]``.
    """

    name = "test-quadratic"

    def __init__(self, a: Tensor, c: Tensor) -> None:
        super().__init__()
        self.a = a
        self.c = torch.nn.Parameter(c.clone())
        self.calls = 0

    def __call__(self, x_1: Tensor, *, cond: Tensor | None = None) -> Tensor:
        self.calls += x_1.shape[0]
        d = x_1 - self.c.to(x_1.dtype)
        return -0.5 * torch.einsum("bi,ij,bj->b", d, self.a.to(x_1.dtype), d)

    def closed_form(self) -> ExpQuadraticMixture:
        """One term: ``P = A``, ``h = A c``, ``log_scale = -c^T A c / 2``."""
        a, c = self.a.detach(), self.c.detach()
        return ExpQuadraticMixture(precision=a[None], shift=(a @ c)[None], log_scale=(-0.5 * c @ a @ c)[None])


class LinearTestReward(Reward):
    """Test double: ``r(x_1) = w . x_1`` on ``[B, D]``, returns ``[B]`` in ``x_1``'s dtype; ``w`` is an ``nn.Parameter``
    (requires grad).

    On Gaussian data even a point-mass posterior gives the exact ``grad V = (d mu / d x) w``.
    1 NFE per call.
    """

    name = "test-linear"

    def __init__(self, w: Tensor) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(w.clone())

    def __call__(self, x_1: Tensor, *, cond: Tensor | None = None) -> Tensor:
        return x_1 @ self.w.to(x_1.dtype)

    def closed_form(self) -> ExpQuadraticMixture:
        """One term: ``P = 0``, ``h = w``, ``log_scale = 0``."""
        w = self.w.detach()
        d = w.shape[0]
        return ExpQuadraticMixture(precision=torch.zeros(1, d, d, dtype=w.dtype), shift=w[None], log_scale=torch.zeros(1, dtype=w.dtype))


class NonDifferentiableReward(Reward):
    """Test double: another reward as a black box (``is_differentiable = False``).

    Calls the wrapped reward on a detached input without autograd, so back-propagating through it
    fails (or gives nothing); :meth:`closed_form` is the wrapped reward's. Cost: the wrapped one's.
    """

    name = "test-black-box"
    is_differentiable = False

    def __init__(self, reward: Reward) -> None:
        super().__init__()
        self.reward = reward

    def __call__(self, x_1: Tensor, *, cond: Tensor | None = None) -> Tensor:
        with torch.no_grad():
            return self.reward(x_1.detach(), cond=cond).detach()

    def closed_form(self) -> ExpQuadraticMixture | None:
        return self.reward.closed_form()


def random_quadratic_reward(dim: int, generator: torch.Generator, *, strength: float = 1.0) -> QuadraticTestReward:
    """A float64 :class:`QuadraticTestReward` with a random SPD ``A`` (eigenvalues in [0.5, 1.5] times ``strength``)
    and a random centre ``c ~ N(0, 1.5^2 I)``."""
    q, _ = torch.linalg.qr(torch.randn(dim, dim, generator=generator, dtype=torch.float64))
    lam = strength * (0.5 + torch.rand(dim, generator=generator, dtype=torch.float64))
    c = 1.5 * torch.randn(dim, generator=generator, dtype=torch.float64)
    return QuadraticTestReward(q @ torch.diag(lam) @ q.T, c)
