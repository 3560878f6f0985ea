"""Interfaces of steering: rewards and value estimators."""

from __future__ import annotations

import abc
from typing import Any, ClassVar

import attrs
import torch
from torch import Tensor

from mfm_framework.interfaces.component import Component

__all__ = ["ExpQuadraticMixture", "Reward", "ValueEstimator", "SteeringContext"]


@attrs.frozen(kw_only=True)
class ExpQuadraticMixture:
    """A reward in closed form: ``exp r(x) = sum_j exp(log_scale_j - x^T P_j x / 2 + h_j^T x)``.

    The exact oracles of Gaussian-mixture data (MATH.md section 8) need only this form: a data
    law tilted by it, and its posterior expectations, stay Gaussian mixtures. ``P_j`` is symmetric
    but need not be definite (a linear reward has ``P = 0``); the tilt of a Gaussian
    ``N(mu, S)`` exists when ``S^-1 + P_j`` is positive definite.

    Attributes:
        precision: the matrices ``P_j``, ``[J, D, D]``.
        shift: the vectors ``h_j``, ``[J, D]``.
        log_scale: the constants ``log_scale_j``, ``[J]``.
    """

    precision: Tensor
    shift: Tensor
    log_scale: Tensor

    def __attrs_post_init__(self) -> None:
        p, h, c = self.precision, self.shift, self.log_scale
        if not all(torch.is_tensor(v) for v in (p, h, c)):
            raise TypeError("ExpQuadraticMixture takes tensors precision [J, D, D], shift [J, D], log_scale [J]")
        if p.ndim != 3 or p.shape[1] != p.shape[2] or h.ndim != 2 or c.ndim != 1:
            raise ValueError(
                "ExpQuadraticMixture needs precision [J, D, D], shift [J, D] and log_scale [J], got "
                f"{tuple(p.shape)}, {tuple(h.shape)} and {tuple(c.shape)}"
            )
        if not (p.shape[0] == h.shape[0] == c.shape[0] and p.shape[1] == h.shape[1]):
            raise ValueError(
                "ExpQuadraticMixture shapes disagree: precision "
                f"{tuple(p.shape)}, shift {tuple(h.shape)}, log_scale {tuple(c.shape)} (want [J, D, D], [J, D], [J])"
            )
        if p.shape[0] < 1:
            raise ValueError("ExpQuadraticMixture needs at least one term")

    @property
    def num_terms(self) -> int:
        """The number of terms ``J``."""
        return int(self.log_scale.shape[0])

    @property
    def dim(self) -> int:
        """The dimension ``D``."""
        return int(self.shift.shape[1])

    def log_terms(self, x: Tensor) -> Tensor:
        """``log_scale_j - x^T P_j x / 2 + h_j^T x`` for ``x`` ``[B, D]``: ``[B, J]`` (in ``x``'s dtype)."""
        p, h, c = (v.to(device=x.device, dtype=x.dtype) for v in (self.precision, self.shift, self.log_scale))
        return c - 0.5 * torch.einsum("bi,jik,bk->bj", x, p, x) + x @ h.T

    def reward(self, x: Tensor) -> Tensor:
        """``r(x) = logsumexp_j(log_scale_j - x^T P_j x / 2 + h_j^T x)`` for ``x`` ``[B, D]``: ``[B]``."""
        return self.log_terms(x).logsumexp(-1)

    def scaled(self, factor: float) -> ExpQuadraticMixture:
        """The form of ``factor * r``: every ``P, h, log_scale`` times ``factor`` (single term only).

        Raises:
            ValueError: for ``J > 1`` (a power of a sum of exponentials is no such sum).
        """
        if self.num_terms != 1 and factor != 1:
            raise ValueError(f"only a single-term form can be scaled, this one has {self.num_terms} terms")
        return ExpQuadraticMixture(
            precision=factor * self.precision, shift=factor * self.shift, log_scale=factor * self.log_scale
        )


class Reward(Component, abc.ABC):
    """A reward ``r(x_1)`` on clean data; steering targets ``p_1(x_1) exp(r(x_1))``.

    Input contract: ``x_1`` in the data's own layout and scale, ``[B, *D]``; the result is ``[B]``.
    Cost: one call is 1 NFE under the paper's accounting.

    Attributes:
        is_differentiable: whether gradients through the reward are meaningful (required by
            gradient-based estimators).
        higher_is_better: the direction of the reward as a metric.
    """

    is_differentiable: ClassVar[bool] = True
    higher_is_better: ClassVar[bool] = True

    @abc.abstractmethod
    def __call__(self, x_1: Tensor, *, cond: Tensor | None = None) -> Tensor:
        """Return ``r(x_1)``, shape ``[B]``."""

    def closed_form(self) -> ExpQuadraticMixture | None:
        """The reward as an :class:`ExpQuadraticMixture`, or ``None`` when it has no such form.

        Exact oracles use it (the tilted law and the exact value of Gaussian-mixture data,
        MATH.md section 8); the closed form must agree with :meth:`__call__` (ignoring ``cond``).
        The default is ``None``.
        """
        return None


@attrs.frozen(kw_only=True)
class SteeringContext:
    """What a value estimator may use.

    Attributes:
        model: the meta flow map (a :class:`~mfm_framework.model.MetaFlowMap`), frozen; its
            ``t = 0`` slice is the base model (``drift``, ``denoise``).
        reward: the reward, frozen.
        generator: random generator for posterior draws (and, in the steering engine, the
            Brownian increments of an SDE).
        cond: class labels ``[B]`` or ``None``.
        ledger: the cost ledger (:class:`~mfm_framework.ledger.CostLedger`) that counts the
            calls made, or ``None``.
        data: the data source, or ``None``; exact oracles use its closed forms (an
            :class:`~mfm_framework.interfaces.ExactData`).
    """

    model: Any
    reward: Reward
    generator: torch.Generator | None = None
    cond: Tensor | None = None
    ledger: Any = None
    data: Any = None


class ValueEstimator(Component, abc.ABC):
    """Estimates the value ``V_t(x) = log E[exp r(x_1) | x_t = x]`` and its gradient in ``x``.

    Gradients flow to ``x`` only: model and reward weights stay frozen.

    Attributes:
        requires_differentiable_reward: True when the estimator backpropagates through the reward.
    """

    requires_differentiable_reward: ClassVar[bool] = False

    @abc.abstractmethod
    def grad_value(self, *, t: Tensor, x: Tensor, context: SteeringContext) -> Tensor:
        """Estimate ``grad_x V_t(x)``; ``t`` ``[B]``, ``x`` and the result ``[B, *D]``."""

    @abc.abstractmethod
    def value(self, *, t: Tensor, x: Tensor, context: SteeringContext) -> Tensor:
        """Estimate ``V_t(x)``, shape ``[B]``."""

    def drift_and_grad_value(self, *, t: Tensor, x: Tensor, context: SteeringContext) -> tuple[Tensor, Tensor]:
        """The base drift ``b_t(x)`` and ``grad_x V_t(x)`` at the same points, both ``[B, *D]``, detached.

        What the steering engine calls at each drift evaluation. The default evaluates
        :meth:`base_drift` (1 NFE of the base model) and then :meth:`grad_value`; an estimator that evaluates the base model at ``(t, x)`` anyway
        (DPS: ``D_t(x)`` from ``b_t(x)``) overrides it to share that forward.
        """
        return self.base_drift(t=t, x=x, context=context), self.grad_value(t=t, x=x, context=context).detach()

    def base_drift(self, *, t: Tensor, x: Tensor, context: SteeringContext) -> Tensor:
        """The unsteered drift ``b_t(x)``, ``[B, *D]``, detached.

        What the steering engine integrates where ``g_t = 0`` (``t = 1``) and what
        :meth:`drift_and_grad_value` pairs with ``grad V``. The default is the base model's
        ``context.model.drift`` without gradients (1 NFE of the base model); an oracle may
        override it with an exact drift.
        """
        with torch.no_grad():
            return context.model.drift(t=t, x=x, cond=context.cond)
