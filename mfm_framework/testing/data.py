"""Conformance suite of the ``data-source`` kind: batch shapes, labels, seeds and rank splits."""

from __future__ import annotations

import itertools
from typing import Any, ClassVar

import torch
from torch import Tensor

from mfm_framework.interfaces import DataBatch, DataSource, SamplableData
from mfm_framework.testing._options import ExampleOptions
from mfm_framework.testing._suite import ConformanceSuite, applies_to

__all__ = ["DataSourceConformance"]


def _samplable(component_cls: type) -> bool:
    return callable(getattr(component_cls, "sample", None))


class DataSourceConformance(ExampleOptions, ConformanceSuite):
    """Checks a :class:`~mfm_framework.interfaces.DataSource` against its interface.

    A source is built with its example options (or defaults). Checks:

    - ``data_shape`` is a tuple of positive ints and ``num_classes`` is ``None`` or an int >= 1;
    - :meth:`~mfm_framework.interfaces.DataSource.batches` yields :class:`DataBatch` es with
      ``x_1`` ``[batch_size, *data_shape]`` (floating, finite; batch sizes ``batch_size`` and 1) and
      labels ``cond`` ``[batch_size]`` (integer, in ``[0, num_classes)``) exactly when
      ``num_classes`` is set; successive batches differ;
    - ``batches`` is reproducible per generator seed, whatever the global random state, and
      different seeds give different data;
    - rank splits (``world_size = 2``): every rank gets batches of ``batch_size`` rows, the ranks'
      rows are disjoint, and each rank's stream is reproducible;
    - a :class:`~mfm_framework.interfaces.SamplableData` source: ``sample(n)`` gives ``x_1``
      ``[n, *data_shape]`` (``n = 1`` too) in the dtype of the batches, labels as above, and is
      reproducible per generator seed (global random state ignored; other seeds, other draws).

    To check a labelled configuration, subclass with ``example_options`` that turn labels on.

    Attributes:
        example_options: see :class:`~mfm_framework.testing._options.ExampleOptions`.
        batch_size: rows per batch.
        steps: batches drawn per stream.
    """

    kind = "data-source"
    batch_size: ClassVar[int] = 8
    steps: ClassVar[int] = 3

    # ------------------------------------------------------------------ helpers
    def make_component(self, component_cls: type) -> DataSource:
        return component_cls(self.component_options(component_cls))

    def _stream(self, source: DataSource, seed: int, *, batch_size: int | None = None, rank: int = 0, world_size: int = 1) -> list[DataBatch]:
        gen = torch.Generator().manual_seed(seed)
        size = self.batch_size if batch_size is None else batch_size
        iterator = source.batches(batch_size=size, generator=gen, rank=rank, world_size=world_size)
        return list(itertools.islice(iterator, self.steps))

    def _check_batch(self, source: DataSource, batch: Any, n: int, what: str) -> None:
        assert isinstance(batch, DataBatch), f"{what}: got {type(batch).__name__}, not a DataBatch"
        x_1, shape = batch.x_1, tuple(source.data_shape)
        assert isinstance(x_1, Tensor) and tuple(x_1.shape) == (n, *shape), (
            f"{what}: x_1 of shape {tuple(getattr(x_1, 'shape', ()))}, expected {(n, *shape)} ([n, *data_shape])"
        )
        assert x_1.is_floating_point(), f"{what}: x_1 has dtype {x_1.dtype}, not a floating dtype"
        assert bool(torch.isfinite(x_1).all()), f"{what}: x_1 is not finite"
        k = source.num_classes
        if k is None:
            assert batch.cond is None, f"{what}: labels given although num_classes is None"
            return
        cond = batch.cond
        assert isinstance(cond, Tensor) and tuple(cond.shape) == (n,), (
            f"{what}: num_classes = {k} but cond is {None if cond is None else tuple(cond.shape)}, expected [{n}] labels"
        )
        assert not cond.is_floating_point() and not cond.is_complex(), f"{what}: labels of dtype {cond.dtype}, not integers"
        low, high = int(cond.min()), int(cond.max())
        assert 0 <= low and high < k, f"{what}: labels in [{low}, {high}], outside [0, num_classes = {k})"

    @staticmethod
    def _equal(a: DataBatch, b: DataBatch) -> bool:
        same_cond = (a.cond is None and b.cond is None) or (
            a.cond is not None and b.cond is not None and torch.equal(a.cond, b.cond)
        )
        return torch.equal(a.x_1, b.x_1) and same_cond

    # ------------------------------------------------------------------ checks
    def test_declares_shape_and_classes(self, component_cls: type) -> None:
        """``data_shape`` is a tuple of positive ints; ``num_classes`` is ``None`` or an int >= 1."""
        source = self.make_component(component_cls)
        shape = source.data_shape
        assert isinstance(shape, tuple) and shape and all(isinstance(d, int) and d >= 1 for d in shape), (
            f"{component_cls.name}: data_shape must be a non-empty tuple of positive ints, got {shape!r}"
        )
        k = source.num_classes
        assert k is None or (isinstance(k, int) and not isinstance(k, bool) and k >= 1), (
            f"{component_cls.name}: num_classes must be None or an int >= 1, got {k!r}"
        )

    def test_batches_shape_and_labels(self, component_cls: type) -> None:
        """Batches ``[batch_size, *D]`` (and of 1), labels exactly with ``num_classes``; successive batches differ."""
        source = self.make_component(component_cls)
        for size in (self.batch_size, 1):
            stream = self._stream(source, 0, batch_size=size)
            for i, batch in enumerate(stream):
                self._check_batch(source, batch, size, f"{component_cls.name}: batch {i} of batches(batch_size={size})")
        stream = self._stream(source, 0)
        assert not torch.equal(stream[0].x_1, stream[1].x_1), f"{component_cls.name}: batches 0 and 1 are identical"

    def test_batches_reproducible_per_seed(self, component_cls: type) -> None:
        """Equal generator seeds give equal streams (global random state ignored); other seeds, other data."""
        source = self.make_component(component_cls)
        torch.manual_seed(1)
        first = self._stream(source, 5)
        torch.manual_seed(2)
        again = self._stream(self.make_component(component_cls), 5)
        for i, (a, b) in enumerate(zip(first, again)):
            assert self._equal(a, b), (
                f"{component_cls.name}: batch {i} differs between two streams with equally seeded generators "
                "(the source ignores its generator or draws from the global random state)"
            )
        other = self._stream(source, 6)
        assert not torch.equal(first[0].x_1, other[0].x_1), f"{component_cls.name}: generator seeds 5 and 6 gave the same batch"

    def test_ranks_get_disjoint_data(self, component_cls: type) -> None:
        """With ``world_size = 2`` each rank gets full batches, reproducibly, and no rank shares rows."""
        source = self.make_component(component_cls)
        ranks = [self._stream(source, 7, rank=r, world_size=2) for r in (0, 1)]
        for r, stream in enumerate(ranks):
            assert len(stream) == self.steps, f"{component_cls.name}: rank {r} of 2 stopped after {len(stream)} batches"
            for i, batch in enumerate(stream):
                self._check_batch(source, batch, self.batch_size, f"{component_cls.name}: rank {r} of 2, batch {i}")
            again = self._stream(source, 7, rank=r, world_size=2)
            assert all(self._equal(a, b) for a, b in zip(stream, again)), (
                f"{component_cls.name}: rank {r} of 2 is not reproducible for one generator seed"
            )
        rows = [torch.cat([b.x_1.reshape(b.x_1.shape[0], -1) for b in stream]) for stream in ranks]
        shared = (rows[0][:, None, :] == rows[1][None, :, :]).all(-1).any().item()
        assert not shared, (
            f"{component_cls.name}: ranks 0 and 1 of 2 received the same example (with equally seeded generators "
            "every rank must draw its own part of the data)"
        )

    @applies_to(_samplable, "a data source with sample(n, generator=...) (SamplableData)")
    def test_sample_shape_and_reproducible(self, component_cls: type) -> None:
        """``sample(n)``: ``[n, *D]`` in the batches' dtype, labels as declared, reproducible per seed."""
        source = self.make_component(component_cls)
        assert isinstance(source, SamplableData)
        batch_dtype = self._stream(source, 0)[0].x_1.dtype
        for n in (self.batch_size, 1):
            batch = source.sample(n, generator=torch.Generator().manual_seed(3))
            self._check_batch(source, batch, n, f"{component_cls.name}: sample({n})")
            assert batch.x_1.dtype == batch_dtype, f"{component_cls.name}: sample gives {batch.x_1.dtype}, batches {batch_dtype}"
        draws = []
        for global_seed in (1, 2):
            torch.manual_seed(global_seed)
            draws.append(source.sample(self.batch_size, generator=torch.Generator().manual_seed(4)))
        assert self._equal(draws[0], draws[1]), (
            f"{component_cls.name}: sample with equally seeded generators differs (the generator is ignored "
            "or the global random state is used)"
        )
        other = source.sample(self.batch_size, generator=torch.Generator().manual_seed(5))
        assert not torch.equal(other.x_1, draws[0].x_1), f"{component_cls.name}: sample gave the same draws for seeds 4 and 5"
