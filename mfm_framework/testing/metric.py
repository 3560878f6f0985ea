"""Conformance suite of the ``metric`` kind: noise floor against shifted laws, seeds, invariances."""

from __future__ import annotations

from collections.abc import Mapping
from typing import ClassVar

import torch
from torch import Tensor

from mfm_framework.interfaces import Metric
from mfm_framework.testing._options import ExampleOptions
from mfm_framework.testing._suite import ConformanceSuite, assert_close

__all__ = ["MetricConformance"]

F32, F64 = torch.float32, torch.float64


class MetricConformance(ExampleOptions, ConformanceSuite):
    """Checks a :class:`~mfm_framework.interfaces.Metric` on Gaussian sample sets.

    A metric is built with its example options (or defaults). Samples are standard Gaussian
    ``[n, *shape]`` (the shape from :meth:`shape_for`), shifted by ``c`` times a unit vector
    for the shifted laws. "Better" means lower when ``lower_is_better``, else higher. Checks:

    - the result is a finite 0-d tensor for float32 and float64 inputs, for ``N != M``;
    - two independent sample sets of one law are better than a law shifted by ``shifts[0]``,
      which is better than one shifted by ``shifts[1]``; a ``lower_is_better`` metric is near 0
      on one law: ``|d(same)| <= floor_fraction * d(far shift)`` (its noise floor);
    - the same generator seed gives the same value, whatever the global random state;
    - the value does not depend on the order of the rows (sample sets are empirical laws);
    - the inputs are left unchanged.

    Symmetry in ``samples`` and ``reference`` is not part of the interface (e.g. a kernel scaled
    on the reference) and is not checked.

    Attributes:
        example_options: see :class:`~mfm_framework.testing._options.ExampleOptions`.
        default_shape: the per-sample shape when :attr:`shapes` has no entry.
        shapes: per-sample shapes per metric name (e.g. ``{"fid": (3, 32, 32)}``).
        n: rows of each sample set of the law checks.
        shifts: the two shifts of the law checks, in standard deviations.
        floor_fraction: the largest ``|d(same law)| / d(far shift)`` accepted.
    """

    kind = "metric"
    default_shape: ClassVar[tuple[int, ...]] = (2,)
    shapes: ClassVar[Mapping[str, tuple[int, ...]]] = {}
    n: ClassVar[int] = 600
    shifts: ClassVar[tuple[float, float]] = (0.5, 3.0)
    floor_fraction: ClassVar[float] = 0.1

    # ------------------------------------------------------------------ helpers
    def make_component(self, component_cls: type) -> Metric:
        return component_cls(self.component_options(component_cls))

    def shape_for(self, component_cls: type) -> tuple[int, ...]:
        """The per-sample shape a metric is checked on."""
        return tuple(self.shapes.get(component_cls.name, self.default_shape))

    def samples(self, gen: torch.Generator, n: int, shape: tuple[int, ...], shift: float = 0.0, dtype: torch.dtype = F64) -> Tensor:
        """``n`` draws of ``N(shift * e, I)`` with ``e`` the unit vector along all coordinates."""
        x = torch.randn(n, *shape, generator=gen, dtype=F64)
        d = x[0].numel()
        return (x + shift / d**0.5).to(dtype)

    def _value(self, metric: Metric, samples: Tensor, reference: Tensor, seed: int, what: str, *, copy: bool = True) -> Tensor:
        """The metric on (copies of) the inputs, checked to be a finite 0-d tensor."""
        if copy:  # so that a metric that modifies its inputs fails test_inputs_unchanged only
            samples, reference = samples.clone(), reference.clone()
        try:
            value = metric(samples=samples, reference=reference, generator=torch.Generator().manual_seed(seed))
        except Exception as exc:
            raise AssertionError(f"{what}: the metric raised {type(exc).__name__}: {exc}") from exc
        assert isinstance(value, Tensor) and value.ndim == 0, f"{what}: returned {value!r}, not a 0-d tensor"
        assert bool(torch.isfinite(value)), f"{what}: returned {value.item()}, not finite"
        return value

    # ------------------------------------------------------------------ checks
    def test_finite_scalar(self, component_cls: type) -> None:
        """A finite 0-d tensor for float32 and float64 inputs of different sizes."""
        metric = self.make_component(component_cls)
        shape = self.shape_for(component_cls)
        gen = self.generator("test_finite_scalar")
        for dtype in (F32, F64):
            x, y = self.samples(gen, 50, shape, dtype=dtype), self.samples(gen, 40, shape, 1.0, dtype=dtype)
            self._value(metric, x, y, 0, f"{component_cls.name} ({dtype}, N = 50, M = 40)")

    def test_noise_floor_below_shifted_laws(self, component_cls: type) -> None:
        """One law < small shift < large shift (in the better direction); near 0 for one law."""
        metric = self.make_component(component_cls)
        shape = self.shape_for(component_cls)
        gen = self.generator("test_noise_floor_below_shifted_laws")
        reference = self.samples(gen, self.n, shape)
        values: dict[str, float] = {}
        for label, shift in (("same law", 0.0), (f"shift {self.shifts[0]}", self.shifts[0]), (f"shift {self.shifts[1]}", self.shifts[1])):
            samples = self.samples(gen, self.n, shape, shift)
            values[label] = float(self._value(metric, samples, reference, 1, f"{component_cls.name} ({label})"))
        sign = 1.0 if getattr(component_cls, "lower_is_better", True) else -1.0
        ordered = [sign * v for v in values.values()]
        report = ", ".join(f"{k}: {v:.4g}" for k, v in values.items()) + f" ({self.n} vs {self.n} standard Gaussian samples)"
        direction = "increase" if sign > 0 else "decrease"
        assert ordered[0] < ordered[1] < ordered[2], f"{component_cls.name}: the metric must {direction} with the shift; {report}"
        if sign > 0:
            far = values[f"shift {self.shifts[1]}"]
            assert abs(values["same law"]) <= self.floor_fraction * far, (
                f"{component_cls.name}: on two samples of one law the metric is not near 0 (above "
                f"{self.floor_fraction} times its value at the far shift); {report}"
            )

    def test_generator_reproducibility(self, component_cls: type) -> None:
        """The same generator seed gives the same value, whatever the global random state."""
        metric = self.make_component(component_cls)
        shape = self.shape_for(component_cls)
        gen = self.generator("test_generator_reproducibility")
        x, y = self.samples(gen, 64, shape), self.samples(gen, 48, shape, 1.0)
        values = []
        for global_seed in (1, 2):
            torch.manual_seed(global_seed)
            values.append(self._value(metric, x, y, 3, component_cls.name))
        assert torch.equal(values[0], values[1]), (
            f"{component_cls.name}: equal generator seeds gave {values[0].item()!r} and {values[1].item()!r} "
            "(the metric ignores its generator or draws from the global random state)"
        )

    def test_row_order_does_not_matter(self, component_cls: type) -> None:
        """Permuting the rows of the samples and of the reference leaves the value unchanged."""
        metric = self.make_component(component_cls)
        shape = self.shape_for(component_cls)
        gen = self.generator("test_row_order_does_not_matter")
        x, y = self.samples(gen, 64, shape), self.samples(gen, 48, shape, 1.0)
        base = self._value(metric, x, y, 4, component_cls.name)
        px, py = torch.randperm(64, generator=gen), torch.randperm(48, generator=gen)
        permuted = self._value(metric, x[px], y[py], 4, component_cls.name)
        assert_close(
            permuted, base, rtol=1e-7, atol=1e-12,
            what=f"{component_cls.name}: the value depends on the order of the rows",
        )

    def test_inputs_unchanged(self, component_cls: type) -> None:
        """The metric does not modify ``samples`` or ``reference``."""
        metric = self.make_component(component_cls)
        shape = self.shape_for(component_cls)
        gen = self.generator("test_inputs_unchanged")
        for dtype in (F32, F64):
            x, y = self.samples(gen, 32, shape, dtype=dtype), self.samples(gen, 24, shape, 1.0, dtype=dtype)
            x0, y0 = x.clone(), y.clone()
            self._value(metric, x, y, 5, component_cls.name, copy=False)
            assert torch.equal(x, x0) and torch.equal(y, y0), f"{component_cls.name}: the metric modified its inputs ({dtype})"
