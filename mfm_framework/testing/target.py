"""Conformance suite of the ``diagonal-target`` kind: the exact conditional drift of Gaussian data."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any, ClassVar

import torch
from torch import Tensor

from mfm_framework.interfaces import DiagonalTarget, Interpolant
from mfm_framework.interfaces._time import pad_time
from mfm_framework.model import MetaFlowMap
from mfm_framework.testing._options import ExampleOptions
from mfm_framework.testing._suite import ConformanceSuite, assert_close
from mfm_framework.testing.exact import GaussianFlowMapBackbone, GaussianFlowMapOptions, LinearSchedule
from mfm_framework.testing.references import (
    CosineSchedule,
    ExactDriftTarget,
    GaussianData,
    GaussianDataOptions,
    fused_posterior,
)

__all__ = ["DiagonalTargetConformance"]

F32, F64 = torch.float32, torch.float64


class DiagonalTargetConformance(ExampleOptions, ConformanceSuite):
    """Checks a :class:`~mfm_framework.interfaces.DiagonalTarget` against the exact drift of Gaussian data.

    A target is built with its example options (or defaults) and prepared
    (:meth:`~mfm_framework.interfaces.DiagonalTarget.prepare`) with the exact meta flow map of
    ``N(mean, std^2 I)`` data and that law as the data source (:class:`GaussianData`, which has
    every exact quantity a teacher may ask for). Reference: the exact conditional drift
    ``bbar_s(y; t, x) = E[dabar_s eps + dbbar_s x_1 | y_s = y, x_t = x]`` (MATH.md sections 2
    and 3), here closed form. Checks:

    - unbiased for the exact drift: at fixed ``(s, y, t, x)`` (``t = 0`` included), the mean of the
      target over exact draws of ``(x_1, eps)`` given both observations equals ``bbar_s(y; t, x)``
      within ``z`` standard errors (a teacher is exact; a data-pair target is unbiased), for every
      schedule pair of :meth:`schedules`;
    - the output has the shape ``[B, *D]`` and dtype of ``y`` (float32, float64, two data shapes)
      and is detached: no gradient reaches the inputs or a teacher;
    - rows are independent (a batch gives the rows' drifts one by one).

    Attributes:
        example_options: see :class:`~mfm_framework.testing._options.ExampleOptions`.
        mean, std: the Gaussian data law.
        data_shapes: the shapes of the shape check (the first one is used by the others).
        cases: the ``(t, s)`` pairs of the unbiasedness check.
        draws: draws of ``(x_1, eps)`` per case.
        z: tolerance of the unbiasedness check, in standard errors.
    """

    kind = "diagonal-target"
    mean: ClassVar[float] = 0.5
    std: ClassVar[float] = 0.7
    data_shapes: ClassVar[tuple[tuple[int, ...], ...]] = ((2,), (3, 2))
    cases: ClassVar[tuple[tuple[float, float], ...]] = ((0.0, 0.3), (0.3, 0.4), (0.6, 0.2), (0.5, 0.7), (0.8, 0.9))
    draws: ClassVar[int] = 4000
    z: ClassVar[float] = 5.0

    # ------------------------------------------------------------------ helpers
    def make_component(self, component_cls: type) -> DiagonalTarget:
        return component_cls(self.component_options(component_cls))

    def schedules(self) -> list[tuple[Interpolant, Interpolant]]:
        """``(outer, inner)`` schedule pairs: linear/linear and cosine/cosine."""
        return [(LinearSchedule(), LinearSchedule()), (CosineSchedule(), CosineSchedule())]

    def make_data(self, shape: tuple[int, ...], dtype: torch.dtype = F64) -> Any:
        """The data source handed to :meth:`~mfm_framework.interfaces.DiagonalTarget.prepare`."""
        return GaussianData(GaussianDataOptions(mean=self.mean, std=self.std, shape=shape), dtype=dtype)

    def prepared(
        self, component_cls: type, outer: Interpolant, inner: Interpolant, shape: tuple[int, ...], dtype: torch.dtype = F64
    ) -> DiagonalTarget:
        """The target, prepared with the exact model and :meth:`make_data`."""
        target = self.make_component(component_cls)
        backbone = GaussianFlowMapBackbone(GaussianFlowMapOptions(mean=self.mean, std=self.std), data_shape=shape)
        model = MetaFlowMap(backbone.bind(interpolant=outer, inner=inner), outer, inner).to(dtype)
        target.prepare(model=model, data=self.make_data(shape, dtype), device=torch.device("cpu"))
        return target

    def inputs(
        self, gen: torch.Generator, outer: Interpolant, inner: Interpolant, shape: tuple[int, ...], *, n: int = 8
    ) -> dict[str, Tensor]:
        """Consistent random arguments of ``drift``: ``x_1`` from the data, ``x``, ``y`` from it (float64)."""
        x_1 = self.mean + self.std * torch.randn(n, *shape, generator=gen, dtype=F64)
        t = 0.9 * torch.rand(n, generator=gen, dtype=F64)
        s = 0.9 * torch.rand(n, generator=gen, dtype=F64)
        x = outer.interpolate(x_0=torch.randn(n, *shape, generator=gen, dtype=F64), x_1=x_1, t=t)
        eps = torch.randn(n, *shape, generator=gen, dtype=F64)
        return {"s": s, "y": inner.interpolate(x_0=eps, x_1=x_1, t=s), "t": t, "x": x, "eps": eps, "x_1": x_1}

    @staticmethod
    def _drift(target: DiagonalTarget, inner: Interpolant, inputs: dict[str, Tensor], what: str) -> Tensor:
        try:
            return target.drift(**inputs, inner=inner)
        except Exception as exc:
            raise AssertionError(f"{what}: drift raised {type(exc).__name__}: {exc}") from exc

    # ------------------------------------------------------------------ checks
    def test_unbiased_for_the_exact_drift(self, component_cls: type) -> None:
        """The mean target over exact ``(x_1, eps) | (y, x)`` draws is the exact conditional drift."""
        shape = self.data_shapes[0]
        options = GaussianDataOptions(mean=self.mean, std=self.std, shape=shape)
        n = self.draws
        for outer, inner in self.schedules():
            target = self.prepared(component_cls, outer, inner, shape)
            exact = ExactDriftTarget(options)
            exact.prepare(model=SimpleNamespace(interpolant=outer), data=None, device=torch.device("cpu"))
            gen = self.generator(f"test_unbiased_for_the_exact_drift-{inner.name}")
            for t_value, s_value in self.cases:
                t = torch.full((n,), t_value, dtype=F64)
                s = torch.full((n,), s_value, dtype=F64)
                x_1 = self.mean + self.std * torch.randn(1, *shape, generator=gen, dtype=F64)
                x = outer.interpolate(x_0=torch.randn(1, *shape, generator=gen, dtype=F64), x_1=x_1, t=t[:1]).expand(n, *shape)
                y = inner.interpolate(x_0=torch.randn(1, *shape, generator=gen, dtype=F64), x_1=x_1, t=s[:1]).expand(n, *shape)
                mean, var = fused_posterior(options, t=t, x=x, s=s, y=y, outer=outer, inner=inner)
                draws = mean + var.sqrt() * torch.randn(n, *shape, generator=gen, dtype=F64)  # x_1 | (y, x)
                eps = (y - pad_time(inner.beta(s), y) * draws) / pad_time(inner.alpha(s), y)
                what = f"{component_cls.name} (schedules {outer.name}/{inner.name}, t = {t_value}, s = {s_value})"
                drift = self._drift(target, inner, {"s": s, "y": y, "t": t, "x": x, "eps": eps, "x_1": draws}, what)
                want = exact.drift(s=s[:1], y=y[:1], t=t[:1], x=x[:1], eps=eps[:1], x_1=draws[:1], inner=inner)[0]
                got, se = drift.mean(0), drift.std(0) / n**0.5
                tol = self.z * se + 1e-6 * (1 + want.abs())
                assert bool(((got - want).abs() <= tol).all()), (
                    f"{what}: the target averages {got.flatten().tolist()} over {n} exact draws of (x_1, eps) given "
                    f"y_s and x_t, the exact conditional drift is {want.flatten().tolist()} (standard error "
                    f"{se.max().item():.1e}; a target must be the drift or an unbiased estimate of it)"
                )

    def test_shape_dtype_and_detached(self, component_cls: type) -> None:
        """``[B, *D]`` in ``y``'s dtype (float32, float64), with no graph to the inputs or a teacher."""
        outer, inner = self.schedules()[0]
        for shape in self.data_shapes:
            for dtype in (F32, F64):
                target = self.prepared(component_cls, outer, inner, shape, dtype)
                inputs = self.inputs(self.generator("test_shape_dtype_and_detached"), outer, inner, shape)
                inputs = {k: v.to(dtype).requires_grad_(v.ndim > 1) for k, v in inputs.items()}
                what = f"{component_cls.name} (data shape {shape}, {dtype})"
                with torch.enable_grad():
                    drift = self._drift(target, inner, inputs, what)
                assert isinstance(drift, Tensor) and drift.shape == inputs["y"].shape, (
                    f"{what}: drift of shape {tuple(getattr(drift, 'shape', ()))} for y of shape {tuple(inputs['y'].shape)}"
                )
                assert drift.dtype == dtype, f"{what}: drift dtype {drift.dtype} for inputs of dtype {dtype}"
                assert bool(torch.isfinite(drift).all()), f"{what}: the drift is not finite"
                assert not drift.requires_grad, (
                    f"{what}: the drift requires grad: a diagonal target is a regression target and must be detached "
                    "(no gradient may reach the inputs or a teacher)"
                )

    def test_rows_are_independent(self, component_cls: type) -> None:
        """A batch gives the same rows as the rows one by one."""
        outer, inner = self.schedules()[0]
        shape = self.data_shapes[0]
        target = self.prepared(component_cls, outer, inner, shape)
        inputs = self.inputs(self.generator("test_rows_are_independent"), outer, inner, shape)
        what = component_cls.name
        whole = self._drift(target, inner, inputs, what)
        rows = torch.cat([self._drift(target, inner, {k: v[i : i + 1] for k, v in inputs.items()}, what) for i in range(len(whole))])
        assert_close(whole, rows, rtol=1e-10, atol=1e-12, what=f"{what}: the drift of a row depends on the other rows")
