"""Conformance suite of the ``consistency-loss`` kind, on the exact flow map of Gaussian data."""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from mfm_framework.interfaces import ConsistencyLoss, DiagonalTarget, Interpolant, LossTerms, TrainingBatch
from mfm_framework.interfaces._time import pad_time
from mfm_framework.model import MetaFlowMap
from mfm_framework.testing._options import ExampleOptions
from mfm_framework.testing._suite import ConformanceSuite, applies_to
from mfm_framework.testing.exact import GaussianFlowMapBackbone, GaussianFlowMapOptions, LinearSchedule
from mfm_framework.testing.references import (
    CosineSchedule,
    DataPairTarget,
    ExactDriftTarget,
    GaussianDataOptions,
)

__all__ = ["ConsistencyLossConformance", "PerturbedGaussianFlowMap"]

F32, F64 = torch.float32, torch.float64


class PerturbedGaussianFlowMap(GaussianFlowMapBackbone):
    """The exact Gaussian average velocity with trainable perturbations (all 0: exact).

    ``v = (1 + scale) v_exact + shift + bend (u - s)``: ``scale`` (scalar), ``shift`` and ``bend``
    (``[*D]``) are parameters. ``bend`` keeps the diagonal exact and breaks only the consistency
    conditions. Shapes as :class:`~mfm_framework.interfaces.Backbone`. 1 NFE.
    """

    name = "gaussian-exact-perturbed"

    def __init__(
        self, options: GaussianFlowMapOptions | None = None, *, data_shape: tuple[int, ...], num_classes: int | None = None
    ) -> None:
        super().__init__(options, data_shape=data_shape, num_classes=num_classes)
        self.scale = nn.Parameter(torch.zeros(()))
        self.shift = nn.Parameter(torch.zeros(data_shape))
        self.bend = nn.Parameter(torch.zeros(data_shape))

    def forward(self, *, y: Tensor, s: Tensor, u: Tensor, t: Tensor, x: Tensor, cond: Tensor | None = None) -> Tensor:
        v = super().forward(y=y, s=s, u=u, t=t, x=x, cond=cond)
        return (1 + self.scale) * v + self.shift + self.bend * pad_time(u - s, y)

    def perturbation(self) -> Tensor:
        """The parameters as one vector ``[shift, bend, scale]``."""
        return torch.cat([self.shift.reshape(-1), self.bend.reshape(-1), self.scale.reshape(1)])

    def perturbation_grad(self) -> Tensor:
        """Their gradients in the same order (zeros where there is none)."""
        parts = []
        for p in (self.shift, self.bend, self.scale):
            parts.append(torch.zeros_like(p).reshape(-1) if p.grad is None else p.grad.reshape(-1))
        return torch.cat(parts)


class _NoForwardAD(torch.autograd.Function):
    """Identity with a backward and no forward-mode derivative (as a fused attention kernel)."""

    @staticmethod
    def forward(v: Tensor) -> Tensor:  # type: ignore[override]
        return v.clone()

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: Tensor) -> None:
        return None

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Tensor:  # type: ignore[override]
        return grad


class _NoJvpGaussianFlowMap(PerturbedGaussianFlowMap):
    """:class:`PerturbedGaussianFlowMap` through an op without a forward-mode derivative."""

    name = "gaussian-exact-no-jvp"
    supports_jvp = False

    def forward(self, *, y: Tensor, s: Tensor, u: Tensor, t: Tensor, x: Tensor, cond: Tensor | None = None) -> Tensor:
        return _NoForwardAD.apply(super().forward(y=y, s=s, u=u, t=t, x=x, cond=cond))


class ConsistencyLossConformance(ExampleOptions, ConformanceSuite):
    """Checks a :class:`~mfm_framework.interfaces.ConsistencyLoss` on the exact flow map of Gaussian data.

    The model is a :class:`~mfm_framework.model.MetaFlowMap` around
    :class:`PerturbedGaussianFlowMap`, the exact average velocity of the meta flow map of
    ``N(mean, std^2 I)`` data plus trainable perturbations (``shift``, ``bend``, ``scale``), for
    each pair of schedules of :meth:`schedules`. Batches come from the data law with contexts
    ``x = alpha_t z + beta_t x_1``. Checks:

    - the loss is a finite 0-d tensor in the model's dtype (float32 and float64) with a graph,
      every logged term is a finite, detached 0-d tensor, and the backward pass gives the model's
      parameters finite, non-zero gradients;
    - at contexts ``t = 1`` (where the posterior is a point mass, so every unbiased target is
      exact: the data pair's drift, the model's own drift and a teacher's) the loss is ~0 on the
      exact map with the exact diagonal target (float64), and clearly positive on maps with a
      ``bend`` (exact diagonal, broken consistency), a ``scale`` or a ``shift``;
    - at interior contexts with data-pair diagonal targets, the exact map is a stationary point:
      the gradient of the loss with respect to every perturbation is 0 within ``z`` Monte Carlo
      standard errors (estimated over ``chunks`` independent batches). Targets built from data
      pairs are unbiased, not exact, so only this expectation vanishes; a biased target fails;
    - the loss draws its randomness from ``batch.generator``: equal seeds give equal losses,
      whatever the global random state;
    - a loss with ``requires_jvp = False`` runs on a backbone without forward-mode derivatives
      (the engine accepts such backbones for it).

    Whether targets are detached (stop-gradient) is not observable through the interface and is
    not checked.

    Attributes:
        example_options: see :class:`~mfm_framework.testing._options.ExampleOptions`.
        dim: data dimension.
        mean, std: the Gaussian data law.
        batch: rows of the single-batch checks.
        chunks, chunk_size: independent batches (and their rows) of the stationarity check.
        z: tolerance of the stationarity check, in standard errors.
        zero_atol: the largest loss accepted as zero on the exact map (float64).
        perturbations: the perturbed maps of the positivity check (parameter name, value).
        min_positive: the smallest loss accepted as positive on a perturbed map.
    """

    kind = "consistency-loss"
    dim: ClassVar[int] = 3
    mean: ClassVar[float] = 0.5
    std: ClassVar[float] = 0.7
    batch: ClassVar[int] = 256
    chunks: ClassVar[int] = 16
    chunk_size: ClassVar[int] = 512
    z: ClassVar[float] = 6.0
    zero_atol: ClassVar[float] = 1e-10
    perturbations: ClassVar[tuple[tuple[str, float], ...]] = (("bend", 0.2), ("scale", 0.2), ("shift", 0.2))
    min_positive: ClassVar[float] = 1e-4

    # ------------------------------------------------------------------ helpers
    def make_component(self, component_cls: type) -> ConsistencyLoss:
        return component_cls(self.component_options(component_cls))

    def schedules(self) -> list[tuple[Interpolant, Interpolant]]:
        """``(outer, inner)`` schedule pairs of the model: linear/linear and cosine/cosine."""
        return [(LinearSchedule(), LinearSchedule()), (CosineSchedule(), CosineSchedule())]

    def make_model(
        self,
        outer: Interpolant,
        inner: Interpolant,
        *,
        dtype: torch.dtype = F64,
        backbone_cls: type[PerturbedGaussianFlowMap] = PerturbedGaussianFlowMap,
        **perturbation: float,
    ) -> MetaFlowMap:
        """The exact model with ``perturbation`` values (``shift``, ``bend``, ``scale``) set."""
        options = GaussianFlowMapOptions(mean=self.mean, std=self.std)
        backbone = backbone_cls(options, data_shape=(self.dim,)).bind(interpolant=outer, inner=inner)
        with torch.no_grad():
            for name, value in perturbation.items():
                getattr(backbone, name).fill_(value)
        return MetaFlowMap(backbone, outer, inner).to(dtype)

    def make_batch(
        self, model: MetaFlowMap, target: DiagonalTarget, gen: torch.Generator, *, n: int, t: float | None = None
    ) -> TrainingBatch:
        """``n`` data rows ``N(mean, std^2 I)``, contexts at time ``t`` (``None``: uniform on [0.05, 0.95])."""
        dtype = next(model.parameters()).dtype
        x_1 = self.mean + self.std * torch.randn(n, self.dim, generator=gen, dtype=F64)
        times = torch.full((n,), t, dtype=F64) if t is not None else 0.05 + 0.9 * torch.rand(n, generator=gen, dtype=F64)
        x = model.interpolant.interpolate(x_0=torch.randn(n, self.dim, generator=gen, dtype=F64), x_1=x_1, t=times)
        target.prepare(model=model, data=None, device=torch.device("cpu"))
        return TrainingBatch(x_1=x_1.to(dtype), t=times.to(dtype), x=x.to(dtype), target=target, generator=gen)

    def exact_target(self) -> ExactDriftTarget:
        """The exact conditional drift of the data law (ignores ``eps`` and ``x_1``)."""
        return ExactDriftTarget(GaussianDataOptions(mean=self.mean, std=self.std, shape=(self.dim,)))

    @staticmethod
    def _call(loss: ConsistencyLoss, model: MetaFlowMap, batch: TrainingBatch) -> LossTerms:
        result = loss(model, batch)
        assert isinstance(result, LossTerms), f"{loss.name} returned {type(result).__name__}, not LossTerms"
        return result

    @staticmethod
    def _describe(result: LossTerms) -> str:
        terms = ", ".join(f"{k} = {float(v):.3e}" for k, v in result.terms.items())
        return f"total {float(result.total):.3e}" + (f" ({terms})" if terms else "")

    # ------------------------------------------------------------------ checks
    def test_finite_scalar_with_gradients_and_detached_terms(self, component_cls: type) -> None:
        """A finite 0-d loss in the model's dtype; detached finite terms; gradients reach the parameters."""
        loss = self.make_component(component_cls)
        outer, inner = self.schedules()[0]
        for dtype in (F32, F64):
            model = self.make_model(outer, inner, dtype=dtype, shift=0.1, bend=0.2, scale=0.1)
            gen = self.generator("test_finite_scalar_with_gradients_and_detached_terms")
            result = self._call(loss, model, self.make_batch(model, DataPairTarget(), gen, n=64))
            total, what = result.total, f"{loss.name} ({dtype})"
            assert isinstance(total, Tensor) and total.ndim == 0, f"{what}: total is not a 0-d tensor: {total!r}"
            assert total.dtype == dtype, f"{what}: total is {total.dtype} for a model in {dtype}"
            assert bool(torch.isfinite(total)), f"{what}: total is not finite: {total.item()}"
            assert total.requires_grad, f"{what}: total has no graph to the model's parameters"
            for key, value in result.terms.items():
                assert isinstance(key, str), f"{what}: term name {key!r} is not a string"
                assert isinstance(value, Tensor) and value.ndim == 0, f"{what}: term {key!r} is not a 0-d tensor"
                assert not value.requires_grad, f"{what}: term {key!r} is not detached (terms are for logging)"
                assert bool(torch.isfinite(value)), f"{what}: term {key!r} is not finite"
            total.backward()
            backbone = model.backbone
            grads = {n: p.grad for n, p in (("shift", backbone.shift), ("bend", backbone.bend), ("scale", backbone.scale))}
            missing = [n for n, g in grads.items() if g is None or not bool((g != 0).any())]
            assert not missing, f"{what}: the model's parameters {missing} get no gradient from the loss"
            bad = [n for n, g in grads.items() if not bool(torch.isfinite(g).all())]
            assert not bad, f"{what}: the model's parameters {bad} get non-finite gradients"

    def test_zero_on_the_exact_map(self, component_cls: type) -> None:
        """At ``t = 1`` contexts the loss of the exact map with the exact target is ~0 (float64)."""
        loss = self.make_component(component_cls)
        for outer, inner in self.schedules():
            model = self.make_model(outer, inner)
            gen = self.generator(f"test_zero_on_the_exact_map-{inner.name}")
            with torch.no_grad():
                result = self._call(loss, model, self.make_batch(model, self.exact_target(), gen, n=self.batch, t=1.0))
            assert abs(float(result.total)) <= self.zero_atol, (
                f"{loss.name}: on the exact flow map of Gaussian data (schedules {outer.name}/{inner.name}, contexts "
                f"at t = 1, exact diagonal target) the loss must vanish, got {self._describe(result)}"
            )

    def test_positive_off_the_exact_map(self, component_cls: type) -> None:
        """At ``t = 1`` contexts, bent, scaled and shifted maps have a clearly positive loss."""
        loss = self.make_component(component_cls)
        for outer, inner in self.schedules():
            for name, value in self.perturbations:
                model = self.make_model(outer, inner, **{name: value})
                gen = self.generator(f"test_positive_off_the_exact_map-{inner.name}")
                with torch.no_grad():
                    result = self._call(loss, model, self.make_batch(model, self.exact_target(), gen, n=self.batch, t=1.0))
                hint = " (exact on the diagonal: only the consistency term can see it)" if name == "bend" else ""
                assert float(result.total) >= self.min_positive, (
                    f"{loss.name}: the exact map perturbed by {name} = {value}{hint} (schedules {outer.name}/"
                    f"{inner.name}) has loss {self._describe(result)}, below {self.min_positive}"
                )

    def test_exact_map_is_stationary(self, component_cls: type) -> None:
        """At interior contexts with data-pair targets, the loss gradient at the exact map is 0 in expectation."""
        loss = self.make_component(component_cls)
        outer, inner = self.schedules()[0]
        model = self.make_model(outer, inner)
        gen = self.generator("test_exact_map_is_stationary")
        grads = []
        for _ in range(self.chunks):
            model.zero_grad(set_to_none=True)
            self._call(loss, model, self.make_batch(model, DataPairTarget(), gen, n=self.chunk_size)).total.backward()
            grads.append(model.backbone.perturbation_grad().detach().clone())
        g = torch.stack(grads)
        mean, se = g.mean(0), g.std(0) / self.chunks**0.5
        bound = self.z * se + 1e-8 * (1 + g.abs().max())
        bad = (mean.abs() > bound).nonzero().flatten().tolist()
        labels = [f"shift[{i}]" for i in range(self.dim)] + [f"bend[{i}]" for i in range(self.dim)] + ["scale"]
        assert not bad, (
            f"{loss.name}: at the exact flow map (interior contexts, data-pair diagonal targets) the expected gradient "
            f"must vanish (every target unbiased); d loss / d "
            + ", ".join(f"{labels[i]} = {mean[i].item():.3e} (standard error {se[i].item():.1e})" for i in bad)
            + f" over {self.chunks} batches of {self.chunk_size}"
        )

    def test_uses_the_batch_generator(self, component_cls: type) -> None:
        """Equal ``batch.generator`` seeds give equal losses, whatever the global random state."""
        loss = self.make_component(component_cls)
        outer, inner = self.schedules()[0]
        model = self.make_model(outer, inner, bend=0.2)
        values = []
        for global_seed in (1, 2):
            batch = self.make_batch(model, DataPairTarget(), self.generator("test_uses_the_batch_generator"), n=64)
            torch.manual_seed(global_seed)
            with torch.no_grad():
                values.append(self._call(loss, model, batch).total)
        assert torch.equal(values[0], values[1]), (
            f"{loss.name}: two calls with equally seeded batch generators gave {values[0].item()!r} and "
            f"{values[1].item()!r}: the loss draws from the global random state instead of batch.generator"
        )

    @applies_to(lambda cls: not getattr(cls, "requires_jvp", False), "a loss with requires_jvp = False")
    def test_runs_without_forward_mode(self, component_cls: type) -> None:
        """A loss that declares ``requires_jvp = False`` runs on a backbone without forward-mode derivatives."""
        loss = self.make_component(component_cls)
        outer, inner = self.schedules()[0]
        model = self.make_model(outer, inner, backbone_cls=_NoJvpGaussianFlowMap)
        batch = self.make_batch(model, DataPairTarget(), self.generator("test_runs_without_forward_mode"), n=16)
        try:
            self._call(loss, model, batch).total.backward()
        except (NotImplementedError, RuntimeError) as exc:
            raise AssertionError(
                f"{loss.name} declares requires_jvp = False but fails on a backbone without forward-mode derivatives "
                f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}): set requires_jvp = True so "
                "that the engine refuses such backbones"
            ) from exc
