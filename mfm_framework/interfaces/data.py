"""Interfaces of data and evaluation: data sources and metrics."""

from __future__ import annotations

import abc
from collections.abc import Iterator
from typing import TYPE_CHECKING, ClassVar, Protocol, runtime_checkable

import attrs
import torch
from torch import Tensor

from mfm_framework.interfaces.component import Component

if TYPE_CHECKING:  # pragma: no cover
    from mfm_framework.interfaces.interpolant import Interpolant
    from mfm_framework.interfaces.steering import ExpQuadraticMixture

__all__ = ["DataSource", "DataBatch", "Metric", "SamplableData", "ExactData", "TiltableData"]


@attrs.frozen(kw_only=True)
class DataBatch:
    """A batch of data: ``x_1`` ``[B, *D]`` and optional integer labels ``cond`` ``[B]``."""

    x_1: Tensor
    cond: Tensor | None = None


class DataSource(Component, abc.ABC):
    """A source of training data ``x_1 ~ p_1`` (a toy law, embedded images, streamed shards).

    Attributes:
        data_shape: the shape ``D`` of one example.
        num_classes: number of class labels, or ``None`` when unlabelled.
    """

    num_classes: int | None = None

    @property
    @abc.abstractmethod
    def data_shape(self) -> tuple[int, ...]:
        """Shape of one example."""

    @abc.abstractmethod
    def batches(
        self, *, batch_size: int, generator: torch.Generator, rank: int = 0, world_size: int = 1
    ) -> Iterator[DataBatch]:
        """An endless iterator of batches for process ``rank`` of ``world_size``.

        Every rank gets the same number of batches per epoch (DDP requires it).
        """


@runtime_checkable
class SamplableData(Protocol):
    """Capability of a data source that draws exact i.i.d. samples (toy laws)."""

    def sample(self, n: int, *, generator: torch.Generator | None = None) -> DataBatch:
        """``n`` i.i.d. draws of ``x_1 ~ p_1``: ``x_1`` ``[n, *D]``."""
        ...


@runtime_checkable
class ExactData(SamplableData, Protocol):
    """Capability of a data law whose marginals and posteriors under an interpolant are known.

    Every method takes the interpolant ``(alpha, beta)`` that defines ``x_t``; times are ``[B]``
    (or scalars), states ``[B, *D]``. These are the ground truth of evaluation (MATH.md section 8).
    """

    def denoiser(self, *, t: Tensor, x: Tensor, interpolant: Interpolant) -> Tensor:
        """``D_t(x) = E[x_1 | x_t = x]``, ``[B, *D]``."""
        ...

    def velocity(self, *, t: Tensor, x: Tensor, interpolant: Interpolant) -> Tensor:
        """``b_t(x) = E[dalpha_t x_0 + dbeta_t x_1 | x_t = x]``, ``[B, *D]``."""
        ...

    def score(self, *, t: Tensor, x: Tensor, interpolant: Interpolant) -> Tensor:
        """``grad log p_t(x)``, ``[B, *D]``."""
        ...

    def posterior_sample(
        self, *, t: Tensor, x: Tensor, n: int, interpolant: Interpolant, generator: torch.Generator | None = None
    ) -> Tensor:
        """``n`` i.i.d. draws from ``p_{1|t}(. | x)`` per context: ``[B, n, *D]``."""
        ...

    def posterior_log_prob(self, *, t: Tensor, x: Tensor, x_1: Tensor, interpolant: Interpolant) -> Tensor:
        """``log p_{1|t}(x_1 | x)`` for ``x_1`` ``[B, M, *D]`` per context ``x`` ``[B, *D]``: ``[B, M]``."""
        ...


@runtime_checkable
class TiltableData(Protocol):
    """Capability of a data law whose tilt by a closed-form reward is known exactly (the oracles).

    ``form`` is a reward in closed form (:class:`~mfm_framework.interfaces.ExpQuadraticMixture`,
    from ``Reward.closed_form()``); the tilted law is ``p_r = p_1 exp(r) / Z`` (MATH.md
    sections 6 and 8).
    """

    def tilted(self, form: ExpQuadraticMixture) -> ExactData:
        """The exact tilted law ``p_1 exp(r) / Z``: a data law of the same family (exact samples,
        log-density, marginals and posteriors)."""
        ...

    def log_value(self, *, t: Tensor, x: Tensor, form: ExpQuadraticMixture, interpolant: Interpolant) -> Tensor:
        """The exact value ``V_t(x) = log E[exp r(x_1) | x_t = x]``, ``[B]``; differentiable in ``x``
        (so autograd gives the exact ``grad V_t``)."""
        ...


class Metric(Component, abc.ABC):
    """A distance or score between generated samples and a reference.

    Attributes:
        lower_is_better: the direction of the metric.
    """

    lower_is_better: ClassVar[bool] = True

    @abc.abstractmethod
    def __call__(
        self, *, samples: Tensor, reference: Tensor, generator: torch.Generator | None = None
    ) -> Tensor:
        """Compare ``samples`` ``[N, *D]`` to ``reference`` ``[M, *D]``; returns a scalar tensor."""
