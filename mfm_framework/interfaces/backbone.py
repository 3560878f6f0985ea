"""The Backbone interface: the network that outputs the average velocity."""

from __future__ import annotations

import abc
from typing import Any, ClassVar

from torch import Tensor, nn

from mfm_framework.interfaces.component import Component

__all__ = ["Backbone"]


class Backbone(Component, nn.Module, abc.ABC):
    """A network ``v_theta(y, s, u, t, x[, cond])`` for the average velocity of a meta flow map.

    Shapes: ``y`` and ``x`` are ``[B, *data_shape]``; ``s``, ``u``, ``t`` are ``[B]``; ``cond`` is
    ``[B]`` (integer class labels) or ``None``; the output has the shape of ``y``.
    Cost: one call is 1 NFE.

    Attributes:
        supports_jvp: True when ``torch.func.jvp`` works through :meth:`forward` (no fused
            attention kernels); JVP-based consistency losses require it.
    """

    supports_jvp: ClassVar[bool] = True

    def __init__(
        self, options: Any = None, *, data_shape: tuple[int, ...], num_classes: int | None = None
    ) -> None:
        super().__init__(options)
        self.data_shape = tuple(data_shape)
        self.num_classes = num_classes

    @abc.abstractmethod
    def forward(
        self, *, y: Tensor, s: Tensor, u: Tensor, t: Tensor, x: Tensor, cond: Tensor | None = None
    ) -> Tensor:
        """Return the average velocity ``v_{s,u}(y; t, x)``, shape ``[B, *data_shape]``."""
