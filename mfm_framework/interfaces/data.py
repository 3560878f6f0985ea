"""Interfaces of data and evaluation: data sources and metrics."""

from __future__ import annotations

import abc
from collections.abc import Iterator
from typing import ClassVar

import attrs
import torch
from torch import Tensor

from mfm_framework.interfaces.component import Component

__all__ = ["DataSource", "DataBatch", "Metric"]


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
