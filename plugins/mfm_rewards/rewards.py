"""Rewards ``r(x_1)`` on vector data with closed forms: linear, quadratic, Gaussian likelihood, Gaussian mixture.

Every reward here takes ``x_1`` ``[B, D]`` (``D`` fixed by its own parameters; another shape is a
``ValueError``), returns ``[B]`` in ``x_1``'s dtype and device, is differentiable in ``x_1``, and
costs 1 NFE per call under the paper's accounting (MATH.md section 6). Each has a ``scale`` option
(a positive inverse temperature) that multiplies ``r``, and each gives its
:meth:`~mfm_framework.interfaces.Reward.closed_form` ``exp r(x) = sum_j exp(c_j - x^T P_j x / 2 +
h_j^T x)`` for the exact oracles of Gaussian-mixture data (MATH.md section 8); the one exception is a
``gaussian-mixture`` reward of several centres with ``scale != 1`` (a power of a sum of Gaussians is
not such a sum), whose closed form is ``None``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import attrs
import torch
from torch import Tensor

from mfm_framework.interfaces import ExpQuadraticMixture, Reward

__all__ = [
    "GaussianLikelihoodRewardOptions",
    "GaussianLikelihoodReward",
    "GaussianMixtureRewardOptions",
    "GaussianMixtureReward",
    "LinearRewardOptions",
    "LinearReward",
    "QuadraticRewardOptions",
    "QuadraticReward",
    "REWARDS",
]

F64 = torch.float64
_LOG_2PI = math.log(2 * math.pi)


# --------------------------------------------------------------------------- option validators
# The spec loader calls field validators with ``instance=None`` (to report every bad field at
# once), so they look at their own value only; checks across fields live in __attrs_post_init__.


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _is_array(value: Any) -> bool:
    return isinstance(value, Sequence) and not isinstance(value, (str, bytes))


def _as_tuple(value: Any) -> Any:
    """Lists (nested) to tuples, so options built in Python stay hashable; other values untouched."""
    if isinstance(value, list):
        return tuple(_as_tuple(v) for v in value)
    if isinstance(value, tuple):
        return tuple(_as_tuple(v) for v in value)
    return value


def _check_positive(_: Any, attribute: attrs.Attribute, value: Any) -> None:
    if not (_is_number(value) and math.isfinite(value) and value > 0):
        raise ValueError(f"'{attribute.name}' must be a finite number > 0, got {value!r}")


def _check_finite(_: Any, attribute: attrs.Attribute, value: Any) -> None:
    if not (_is_number(value) and math.isfinite(value)):
        raise ValueError(f"'{attribute.name}' must be a finite number, got {value!r}")


def _check_vector(_: Any, attribute: attrs.Attribute, value: Any) -> None:
    if not _is_array(value) or len(value) == 0 or not all(_is_number(v) and math.isfinite(v) for v in value):
        raise ValueError(f"'{attribute.name}' must be a non-empty array of finite numbers, got {value!r}")


def _check_rows(_: Any, attribute: attrs.Attribute, value: Any) -> None:
    if not _is_array(value) or len(value) == 0:
        raise ValueError(f"'{attribute.name}' must be a non-empty array of arrays of numbers, got {value!r}")
    for i, row in enumerate(value):
        if not _is_array(row) or len(row) == 0 or not all(_is_number(v) and math.isfinite(v) for v in row):
            raise ValueError(f"'{attribute.name}' must hold non-empty arrays of finite numbers; row {i} is {row!r}")
    if len({len(row) for row in value}) != 1:
        raise ValueError(
            f"'{attribute.name}' rows must all have the same length (the dimension), "
            f"got lengths {[len(row) for row in value]}"
        )


def _check_weights(_: Any, attribute: attrs.Attribute, value: Any) -> None:
    if value is None:
        return
    if not _is_array(value) or len(value) == 0 or not all(_is_number(v) and math.isfinite(v) and v > 0 for v in value):
        raise ValueError(f"'{attribute.name}' must be a non-empty array of finite numbers > 0, got {value!r}")


# --------------------------------------------------------------------------- shared machinery


class _VectorReward(Reward):
    """Shared machinery: parameters as float64 CPU tensors, cast per (device, dtype), shape checks."""

    def __init__(self, options: Any = None) -> None:
        super().__init__(options)
        self._params64: dict[str, Tensor] = self._parameters()
        self._cache: dict[tuple[torch.device, torch.dtype], dict[str, Tensor]] = {}

    def _parameters(self) -> dict[str, Tensor]:  # pragma: no cover - every subclass overrides it
        raise NotImplementedError

    @property
    def dim(self) -> int:
        """The dimension ``D`` of ``x_1`` that this reward takes."""
        raise NotImplementedError  # pragma: no cover

    def _on(self, x_1: Tensor) -> dict[str, Tensor]:
        """Check ``x_1`` ``[B, D]`` and return the parameters in its device and dtype."""
        if not torch.is_tensor(x_1):
            raise TypeError(f"the '{self.name}' reward takes a tensor x_1 [B, {self.dim}], got {type(x_1).__name__}")
        if x_1.ndim != 2 or x_1.shape[1] != self.dim:
            raise ValueError(
                f"the '{self.name}' reward takes x_1 of shape [B, {self.dim}] (the dimension of its parameters), "
                f"got {tuple(x_1.shape)}"
            )
        if not x_1.is_floating_point():
            raise TypeError(f"the '{self.name}' reward takes a floating-point x_1, got {x_1.dtype}")
        key = (x_1.device, x_1.dtype)
        if key not in self._cache:
            self._cache[key] = {k: v.to(device=x_1.device, dtype=x_1.dtype) for k, v in self._params64.items()}
        return self._cache[key]


# --------------------------------------------------------------------------- linear


@attrs.frozen(kw_only=True)
class LinearRewardOptions:
    """Options of :class:`LinearReward`.

    Attributes:
        a: the direction ``a``, ``D`` numbers (sets the dimension).
        b: the offset ``b`` (does not change the tilted law).
        scale: inverse temperature ``> 0``; multiplies ``r``.
    """

    a: tuple[float, ...] = attrs.field(converter=_as_tuple, validator=_check_vector)
    b: float = attrs.field(default=0.0, validator=_check_finite)
    scale: float = attrs.field(default=1.0, validator=_check_positive)


class LinearReward(_VectorReward):
    """Linear reward ``r(x_1) = scale * (a . x_1 + b)``.

    Shapes: ``x_1`` ``[B, D]`` with ``D = len(a)``; returns ``[B]``. Cost: 1 NFE per call.
    Closed form: one term with ``P = 0``, ``h = scale * a``, ``c = scale * b`` (the tilt of a
    Gaussian ``N(mu, S)`` is ``N(mu + scale S a, S)``).
    """

    name = "linear"
    Options = LinearRewardOptions
    is_differentiable = True

    def _parameters(self) -> dict[str, Tensor]:
        return {"a": torch.tensor(self.options.a, dtype=F64)}

    @property
    def dim(self) -> int:
        """``D = len(a)``."""
        return len(self.options.a)

    def __call__(self, x_1: Tensor, *, cond: Tensor | None = None) -> Tensor:
        """``r(x_1)``, ``[B]``; ``cond`` is ignored."""
        p = self._on(x_1)
        return self.options.scale * (x_1 @ p["a"] + self.options.b)

    def closed_form(self) -> ExpQuadraticMixture:
        """``P = 0``, ``h = scale * a``, ``c = scale * b`` (one term)."""
        s, d = self.options.scale, self.dim
        return ExpQuadraticMixture(
            precision=torch.zeros(1, d, d, dtype=F64),
            shift=s * self._params64["a"][None],
            log_scale=torch.tensor([s * self.options.b], dtype=F64),
        )


# --------------------------------------------------------------------------- quadratic


@attrs.frozen(kw_only=True)
class QuadraticRewardOptions:
    """Options of :class:`QuadraticReward`.

    Attributes:
        center: the centre ``c``, ``D`` numbers (sets the dimension).
        tau: the length scale ``tau > 0``.
        scale: inverse temperature ``> 0``; multiplies ``r``.
    """

    center: tuple[float, ...] = attrs.field(converter=_as_tuple, validator=_check_vector)
    tau: float = attrs.field(default=1.0, validator=_check_positive)
    scale: float = attrs.field(default=1.0, validator=_check_positive)


class QuadraticReward(_VectorReward):
    """Quadratic reward ``r(x_1) = -scale * |x_1 - c|^2 / (2 tau^2)`` (pulls samples towards ``c``).

    Shapes: ``x_1`` ``[B, D]`` with ``D = len(center)``; returns ``[B]``. Cost: 1 NFE per call.
    Closed form: one term with ``P = (scale / tau^2) I``, ``h = scale c / tau^2``,
    ``c_0 = -scale |c|^2 / (2 tau^2)``.
    """

    name = "quadratic"
    Options = QuadraticRewardOptions
    is_differentiable = True

    def _parameters(self) -> dict[str, Tensor]:
        return {"center": torch.tensor(self.options.center, dtype=F64)}

    @property
    def dim(self) -> int:
        """``D = len(center)``."""
        return len(self.options.center)

    def __call__(self, x_1: Tensor, *, cond: Tensor | None = None) -> Tensor:
        """``r(x_1)``, ``[B]``; ``cond`` is ignored."""
        p = self._on(x_1)
        k = self.options.scale / (2 * self.options.tau**2)
        return -k * (x_1 - p["center"]).square().sum(-1)

    def closed_form(self) -> ExpQuadraticMixture:
        """``P = (scale / tau^2) I``, ``h = scale c / tau^2``, ``c_0 = -scale |c|^2 / (2 tau^2)`` (one term)."""
        k = self.options.scale / self.options.tau**2
        c = self._params64["center"]
        return ExpQuadraticMixture(
            precision=k * torch.eye(self.dim, dtype=F64)[None],
            shift=k * c[None],
            log_scale=(-0.5 * k * c.square().sum())[None],
        )


# --------------------------------------------------------------------------- Gaussian likelihood


@attrs.frozen(kw_only=True)
class GaussianLikelihoodRewardOptions:
    """Options of :class:`GaussianLikelihoodReward`; the defaults are the paper's 2-D inverse problem.

    Attributes:
        A: the forward operator, ``M`` rows of ``D`` numbers (``y = A x_1 + noise``).
        y: the observation, ``M`` numbers.
        sigma: the noise standard deviation ``> 0``.
        scale: inverse temperature ``> 0``; multiplies ``r``.
    """

    A: tuple[tuple[float, ...], ...] = attrs.field(default=((1.2, -0.8),), converter=_as_tuple, validator=_check_rows)  # noqa: N815
    y: tuple[float, ...] = attrs.field(default=(-1.0,), converter=_as_tuple, validator=_check_vector)
    sigma: float = attrs.field(default=0.2, validator=_check_positive)
    scale: float = attrs.field(default=1.0, validator=_check_positive)

    def __attrs_post_init__(self) -> None:
        if len(self.y) != len(self.A):
            raise ValueError(
                f"'y' has {len(self.y)} entries but 'A' has {len(self.A)} rows (one observation per row of A)"
            )


class GaussianLikelihoodReward(_VectorReward):
    """Log-likelihood of a linear inverse problem ``r(x_1) = -scale * |y - A x_1|^2 / (2 sigma^2)``.

    The observation model is ``y = A x_1 + N(0, sigma^2 I)``; steering by this reward samples the
    posterior ``p(x_1 | y)`` (at ``scale = 1``). The default is the paper's 2-D task
    ``A = [[1.2, -0.8]]``, ``y = [-1]``, ``sigma = 0.2``. The normalising constant of the
    likelihood is left out (it does not change the tilted law).

    Shapes: ``x_1`` ``[B, D]`` with ``D`` the row length of ``A``; returns ``[B]``.
    Cost: 1 NFE per call. Closed form: one term with ``P = scale A^T A / sigma^2``,
    ``h = scale A^T y / sigma^2``, ``c = -scale |y|^2 / (2 sigma^2)``.
    """

    name = "gaussian-likelihood"
    Options = GaussianLikelihoodRewardOptions
    is_differentiable = True

    def _parameters(self) -> dict[str, Tensor]:
        return {"A": torch.tensor(self.options.A, dtype=F64), "y": torch.tensor(self.options.y, dtype=F64)}

    @property
    def dim(self) -> int:
        """``D``, the row length of ``A``."""
        return len(self.options.A[0])

    def __call__(self, x_1: Tensor, *, cond: Tensor | None = None) -> Tensor:
        """``r(x_1)``, ``[B]``; ``cond`` is ignored."""
        p = self._on(x_1)
        k = self.options.scale / (2 * self.options.sigma**2)
        return -k * (p["y"] - x_1 @ p["A"].T).square().sum(-1)

    def closed_form(self) -> ExpQuadraticMixture:
        """``P = scale A^T A / sigma^2``, ``h = scale A^T y / sigma^2``, ``c = -scale |y|^2 / (2 sigma^2)``."""
        k = self.options.scale / self.options.sigma**2
        a, y = self._params64["A"], self._params64["y"]
        return ExpQuadraticMixture(
            precision=k * (a.T @ a)[None], shift=k * (a.T @ y)[None], log_scale=(-0.5 * k * y.square().sum())[None]
        )


# --------------------------------------------------------------------------- Gaussian mixture


@attrs.frozen(kw_only=True)
class GaussianMixtureRewardOptions:
    """Options of :class:`GaussianMixtureReward`.

    Attributes:
        centers: the ``J`` centres ``c_j``, each ``D`` numbers (all the same length).
        tau: the common standard deviation ``tau > 0`` of the bumps.
        weights: the ``J`` weights ``nu_j > 0``, used as given (not normalised); default
            ``1 / J`` each.
        scale: inverse temperature ``> 0``; multiplies ``r`` (the closed form then exists only
            for a single centre).
    """

    centers: tuple[tuple[float, ...], ...] = attrs.field(converter=_as_tuple, validator=_check_rows)
    tau: float = attrs.field(default=1.0, validator=_check_positive)
    weights: tuple[float, ...] | None = attrs.field(default=None, converter=_as_tuple, validator=_check_weights)
    scale: float = attrs.field(default=1.0, validator=_check_positive)

    def __attrs_post_init__(self) -> None:
        if self.weights is not None and len(self.weights) != len(self.centers):
            raise ValueError(
                f"'weights' has {len(self.weights)} entries but there are {len(self.centers)} 'centers'"
            )


class GaussianMixtureReward(_VectorReward):
    """Mixture-of-Gaussians reward ``exp(r(x_1) / scale) = sum_j nu_j N(x_1; c_j, tau^2 I)``.

    At ``scale = 1``: ``r(x_1) = log sum_j nu_j N(x_1; c_j, tau^2 I)``, computed with logsumexp
    (stable far from every centre). Steering then favours the neighbourhoods of the centres.

    Shapes: ``x_1`` ``[B, D]`` with ``D`` the length of the centres; returns ``[B]``.
    Cost: 1 NFE per call. Closed form (``scale = 1``, or a single centre): term ``j`` has
    ``P_j = I / tau^2``, ``h_j = c_j / tau^2``,
    ``c_j = log nu_j - |c_j|^2 / (2 tau^2) - (D / 2) log(2 pi tau^2)``, all times ``scale``
    for a single centre; ``None`` for several centres with ``scale != 1``.
    """

    name = "gaussian-mixture"
    Options = GaussianMixtureRewardOptions
    is_differentiable = True

    def _parameters(self) -> dict[str, Tensor]:
        centers = torch.tensor(self.options.centers, dtype=F64)
        j = centers.shape[0]
        w = torch.full((j,), 1.0 / j, dtype=F64) if self.options.weights is None else torch.tensor(self.options.weights, dtype=F64)
        d, tau = centers.shape[1], self.options.tau
        log_norm = -0.5 * d * (_LOG_2PI + 2 * math.log(tau))
        return {"centers": centers, "log_weights": w.log() + log_norm}

    @property
    def dim(self) -> int:
        """``D``, the length of the centres."""
        return len(self.options.centers[0])

    def __call__(self, x_1: Tensor, *, cond: Tensor | None = None) -> Tensor:
        """``r(x_1)``, ``[B]``; ``cond`` is ignored."""
        p = self._on(x_1)
        sq = (x_1[:, None, :] - p["centers"][None]).square().sum(-1)  # [B, J]
        return self.options.scale * (p["log_weights"] - sq / (2 * self.options.tau**2)).logsumexp(-1)

    def closed_form(self) -> ExpQuadraticMixture | None:
        """Term ``j``: ``P_j = I / tau^2``, ``h_j = c_j / tau^2``, ``c_j = log nu_j - |c_j|^2 / (2 tau^2) - (D/2) log(2 pi tau^2)``.

        Scaled by ``scale`` for a single centre; ``None`` for several centres with ``scale != 1``.
        """
        centers, log_w = self._params64["centers"], self._params64["log_weights"]
        j, d = centers.shape
        k = 1.0 / self.options.tau**2
        form = ExpQuadraticMixture(
            precision=k * torch.eye(d, dtype=F64).expand(j, d, d).clone(),
            shift=k * centers,
            log_scale=log_w - 0.5 * k * centers.square().sum(-1),
        )
        if self.options.scale == 1:
            return form
        if j == 1:
            return form.scaled(self.options.scale)
        return None


REWARDS: tuple[type, ...] = (LinearReward, QuadraticReward, GaussianLikelihoodReward, GaussianMixtureReward)
