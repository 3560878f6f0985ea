"""What the engines and components may assume of a meta flow map model."""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from torch import Tensor

from mfm_framework.interfaces.interpolant import Interpolant

__all__ = ["FlowMapModel"]


@runtime_checkable
class FlowMapModel(Protocol):
    """A meta flow map: average velocities ``v_{s,u}(y; t, x)`` of a family of inner transports.

    Attributes:
        interpolant: the outer schedule ``(alpha, beta)`` of the context ``x_t``.
        inner: the inner schedule ``(abar, bbar)`` from fresh noise to the posterior.
    """

    interpolant: Interpolant
    inner: Interpolant

    def velocity(
        self, *, s: Tensor, u: Tensor, y: Tensor, t: Tensor, x: Tensor, cond: Tensor | None = None
    ) -> Tensor:
        """Average velocity ``v_{s,u}(y; t, x)``; times ``[B]``, states ``[B, *D]``. 1 NFE."""
        ...
