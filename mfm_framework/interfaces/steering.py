"""Interfaces of steering: rewards and value estimators."""

from __future__ import annotations

import abc
from typing import Any, ClassVar

import attrs
import torch
from torch import Tensor

from mfm_framework.interfaces.component import Component

__all__ = ["Reward", "ValueEstimator", "SteeringContext"]


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


@attrs.frozen(kw_only=True)
class SteeringContext:
    """What a value estimator may use.

    Attributes:
        model: the meta flow map (``FlowMapModel``), frozen.
        reward: the reward, frozen.
        generator: random generator for posterior draws.
        cond: class labels ``[B]`` or ``None``.
        ledger: the cost ledger that counts the calls made, or ``None``.
    """

    model: Any
    reward: Reward
    generator: torch.Generator | None = None
    cond: Tensor | None = None
    ledger: Any = None


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
