"""Interfaces of training: diagonal targets and consistency losses, and their records."""

from __future__ import annotations

import abc
from typing import Any, ClassVar

import attrs
import torch
from torch import Tensor

from mfm_framework.interfaces.component import Component
from mfm_framework.interfaces.model import FlowMapModel

__all__ = ["DiagonalTarget", "ConsistencyLoss", "TrainingBatch", "LossTerms"]


class DiagonalTarget(Component, abc.ABC):
    """The drift ``bbar_s(y; t, x)`` of the inner transports, used as the diagonal target.

    Implementations: from data pairs (self-distillation) or from a frozen teacher through the
    GLASS fusion (MATH.md sections 3 and 4).
    """

    def prepare(self, *, model: FlowMapModel, data: Any, device: torch.device) -> None:  # noqa: B027
        """Load what the target needs before training starts.

        Args:
            model: the meta flow map being trained (its interpolants).
            data: the run's :class:`~mfm_framework.interfaces.DataSource` (a teacher may use its
                exact velocity when it is :class:`~mfm_framework.interfaces.ExactData`).
            device: where training runs.
        """

    @abc.abstractmethod
    def drift(
        self,
        *,
        s: Tensor,
        y: Tensor,
        t: Tensor,
        x: Tensor,
        eps: Tensor,
        x_1: Tensor,
        inner: Any,
        cond: Tensor | None = None,
    ) -> Tensor:
        """The target drift at inner state ``y = abar_s eps + bbar_s x_1`` and context ``(t, x)``.

        Args:
            s, t: ``[B]``; y, x, eps, x_1: ``[B, *D]``; inner: the inner Interpolant.

        Returns:
            ``[B, *D]``, detached (a regression target).
        """


@attrs.frozen(kw_only=True)
class TrainingBatch:
    """One training batch, with its context already drawn by the engine.

    Attributes:
        x_1: data ``[B, *D]``.
        t: context times ``[B]``.
        x: context states ``x_t = alpha_t z + beta_t x_1``, ``[B, *D]``.
        cond: class labels ``[B]`` or ``None``.
        target: the diagonal target.
        generator: the random generator for the loss's own draws.
        progress: fraction of training done, in [0, 1] (for curricula).
    """

    x_1: Tensor
    t: Tensor
    x: Tensor
    target: DiagonalTarget
    generator: torch.Generator | None = None
    cond: Tensor | None = None
    progress: float = 1.0


@attrs.frozen(kw_only=True)
class LossTerms:
    """The result of a loss.

    Attributes:
        total: the scalar to differentiate.
        terms: named scalar parts for logging (detached), e.g. ``{"diagonal": ..., "consistency": ...}``.
    """

    total: Tensor
    terms: dict[str, Tensor] = attrs.field(factory=dict)


class ConsistencyLoss(Component, abc.ABC):
    """A training objective for a meta flow map: the diagonal term plus a consistency term.

    Cost: stated by each implementation (forwards and JVPs per example).

    Attributes:
        requires_jvp: True when the loss takes forward-mode JVPs through the backbone (the engine
            refuses backbones whose ``supports_jvp`` is False).
    """

    requires_jvp: ClassVar[bool] = False

    @abc.abstractmethod
    def __call__(self, model: FlowMapModel, batch: TrainingBatch) -> LossTerms:
        """Return the loss of ``model`` on ``batch`` with stop-gradient targets."""
