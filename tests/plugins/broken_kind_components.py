"""Deliberately wrong backbones, losses, targets, data sources and metrics (one bug each).

They prove that the backbone, consistency-loss, diagonal-target, data-source and metric suites
catch real bugs: :data:`EXPECTED_FAILURES` lists, per component, suite checks that must fail on
it, and :data:`STILL_PASSING` checks that must not (the checks are specific).
:class:`BrokenKindsPlugin` registers them all through the ordinary hooks.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import attrs
import torch
import torch.nn.functional as F
from mfm_backbones import MLPBackbone
from mfm_data import GaussianMixture, GaussianMixtureOptions
from mfm_losses import EulerianLoss, MeanFlowLoss, SemigroupLoss
from mfm_losses.consistency import _eulerian_residual
from mfm_metrics import MMD, EnergyDistance, SlicedWasserstein2
from mfm_targets import DataTarget, TeacherTarget
from torch import Tensor, nn

from mfm_framework import hookimpl
from mfm_framework.interfaces import DataBatch, TrainingBatch

__all__ = ["DISTRIBUTION", "EXPECTED_FAILURES", "STILL_PASSING", "BrokenKindsPlugin"]

DISTRIBUTION = "mfm-broken-kind-components"

B, L, T, D, M = (
    "BackboneConformance",
    "ConsistencyLossConformance",
    "DiagonalTargetConformance",
    "DataSourceConformance",
    "MetricConformance",
)


# ----------------------------------------------------------------------------------- backbones
class SqueezingBackbone(MLPBackbone):
    """MLP that squeezes its output, dropping the batch dimension of a batch of 1."""

    name = "squeezes-batch"

    def forward(self, **kwargs: Any) -> Tensor:
        return super().forward(**kwargs).squeeze(0)


class FusedAttentionBackbone(MLPBackbone):
    """MLP with a fused attention kernel over 4 feature tokens, still claiming ``supports_jvp``."""

    name = "fused-attention"

    def forward(self, *, y: Tensor, s: Tensor, u: Tensor, t: Tensor, x: Tensor, cond: Tensor | None = None) -> Tensor:
        batch, emb = y.shape[0], self.time_embedding
        parts = [y.reshape(batch, -1), x.reshape(batch, -1), emb(s), emb(u), emb(u - s), emb(t)]
        if self.class_embedding is not None:
            labels = cond if cond is not None else torch.full((batch,), self.num_classes, dtype=torch.long)
            parts.append(self.class_embedding(labels))
        h = self.hidden(torch.cat(parts, dim=1))
        tokens = h.reshape(batch, 4, -1)
        h = h + F.scaled_dot_product_attention(tokens, tokens, tokens).reshape(batch, -1)
        return self.out(h).reshape(y.shape)


class BatchCentringBackbone(MLPBackbone):
    """MLP that subtracts the batch mean of its output (batch statistics, even in eval mode)."""

    name = "batch-centring"

    def forward(self, **kwargs: Any) -> Tensor:
        out = super().forward(**kwargs)
        return out - 0.5 * out.mean(0, keepdim=True)


class Float32OutputBackbone(MLPBackbone):
    """MLP whose output is always float32."""

    name = "float32-output"

    def forward(self, **kwargs: Any) -> Tensor:
        return super().forward(**kwargs).float()


class UnusedParameterBackbone(MLPBackbone):
    """MLP with a parameter that forward never uses."""

    name = "unused-parameter"

    def __init__(self, options: Any = None, *, data_shape: tuple[int, ...], num_classes: int | None = None) -> None:
        super().__init__(options, data_shape=data_shape, num_classes=num_classes)
        self.gate = nn.Parameter(torch.ones(()))


class IgnoresContextTimeBackbone(MLPBackbone):
    """MLP that feeds t = 0 whatever the context time."""

    name = "ignores-t"

    def forward(self, *, t: Tensor, **kwargs: Any) -> Tensor:
        return super().forward(t=torch.zeros_like(t), **kwargs)


class IgnoresLabelsBackbone(MLPBackbone):
    """MLP that always uses the "no label" class embedding."""

    name = "ignores-labels"

    def forward(self, *, cond: Tensor | None = None, **kwargs: Any) -> Tensor:
        return super().forward(cond=None, **kwargs)


class DropoutInEvalBackbone(MLPBackbone):
    """MLP with dropout that stays on in eval mode."""

    name = "dropout-in-eval"

    def forward(self, **kwargs: Any) -> Tensor:
        return F.dropout(super().forward(**kwargs), p=0.2, training=True)


class PlainTensorStateBackbone(MLPBackbone):
    """MLP with a random output scale kept as a plain tensor (not a buffer: checkpoints lose it)."""

    name = "plain-tensor-state"

    def __init__(self, options: Any = None, *, data_shape: tuple[int, ...], num_classes: int | None = None) -> None:
        super().__init__(options, data_shape=data_shape, num_classes=num_classes)
        self.gain = 1 + torch.rand(())

    def forward(self, **kwargs: Any) -> Tensor:
        out = super().forward(**kwargs)
        return self.gain.to(out.dtype) * out


# -------------------------------------------------------------------------------------- losses
class WrongTangentEulerianLoss(EulerianLoss):
    """Eulerian loss whose JVP transports along ``-b`` instead of ``b``."""

    name = "wrong-tangent"

    def consistency_residual(self, model: Any, batch: TrainingBatch, draw: Any) -> Tensor:
        with torch.no_grad():
            b = model.velocity(s=draw.s, u=draw.s, y=draw.y, t=batch.t, x=batch.x, cond=batch.cond)
        return _eulerian_residual(model, batch, draw, -b)


class ContextDriftMeanFlowLoss(MeanFlowLoss):
    """MeanFlow whose pair drift uses the context ``x`` in place of ``x_1`` (right only at t = 1)."""

    name = "context-drift"

    def consistency_residual(self, model: Any, batch: TrainingBatch, draw: Any) -> Tensor:
        b = model.inner.velocity_target(x_0=draw.eps, x_1=batch.x, t=draw.s)
        return _eulerian_residual(model, batch, draw, b)


class GlobalRngLoss(SemigroupLoss):
    """Semigroup loss that draws its times and noise from the global generator."""

    name = "global-rng-loss"

    def __call__(self, model: Any, batch: TrainingBatch) -> Any:
        return super().__call__(model, attrs.evolve(batch, generator=None))


class UndeclaredJvpLoss(EulerianLoss):
    """Eulerian loss (one JVP per example) that declares ``requires_jvp = False``."""

    name = "undeclared-jvp"
    requires_jvp = False


class AttachedTermsLoss(SemigroupLoss):
    """Semigroup loss that logs its total with its graph."""

    name = "attached-terms"

    def __call__(self, model: Any, batch: TrainingBatch) -> Any:
        result = super().__call__(model, batch)
        return attrs.evolve(result, terms={**result.terms, "total": result.total})


class DiagonalOnlyLoss(SemigroupLoss):
    """Semigroup loss whose consistency residual is always 0 (only the diagonal trains)."""

    name = "diagonal-only"

    def consistency_residual(self, model: Any, batch: TrainingBatch, draw: Any) -> Tensor:
        return 0 * model.velocity(s=draw.s, u=draw.u, y=draw.y, t=batch.t, x=batch.x, cond=batch.cond)


# ------------------------------------------------------------------------------------- targets
class FlippedNoiseTarget(DataTarget):
    """Data-pair target with the sign of the noise term flipped: ``-dabar_s eps + dbbar_s x_1``."""

    name = "flipped-noise"

    def drift(self, *, eps: Tensor, **kwargs: Any) -> Tensor:
        return super().drift(eps=-eps, **kwargs)


class UnconditionalTeacher(TeacherTarget):
    """GLASS teacher that drops the context (fuses with t = 0): right only at t = 0."""

    name = "unconditional-teacher"

    def drift(self, *, t: Tensor, x: Tensor, **kwargs: Any) -> Tensor:
        return super().drift(t=torch.zeros_like(t), x=torch.zeros_like(x), **kwargs)


class AttachedDataTarget(DataTarget):
    """Data-pair target that keeps the graph of its inputs."""

    name = "attached-target"

    def drift(self, *, s: Tensor, eps: Tensor, x_1: Tensor, inner: Any, **kwargs: Any) -> Tensor:
        return inner.velocity_target(x_0=eps, x_1=x_1, t=s)


# -------------------------------------------------------------------------------- data sources
class GlobalRngMixture(GaussianMixture):
    """Gaussian mixture that ignores the generator it is given."""

    name = "global-rng-data"

    def sample(self, n: int, *, generator: torch.Generator | None = None) -> DataBatch:
        return super().sample(n, generator=None)


class SameDataOnEveryRank(GaussianMixture):
    """Gaussian mixture whose ranks all draw the same rows."""

    name = "same-on-every-rank"

    def batches(self, *, batch_size: int, generator: torch.Generator, rank: int = 0, world_size: int = 1) -> Iterator[DataBatch]:
        return super().batches(batch_size=batch_size, generator=generator)


def _labelled(options: GaussianMixtureOptions | None) -> GaussianMixtureOptions:
    return attrs.evolve(options or GaussianMixtureOptions(), labelled=True)


class OneBasedLabels(GaussianMixture):
    """Labelled Gaussian mixture whose labels run from 1 to K."""

    name = "one-based-labels"

    def __init__(self, options: GaussianMixtureOptions | None = None, **kwargs: Any) -> None:
        super().__init__(_labelled(options), **kwargs)

    def sample(self, n: int, *, generator: torch.Generator | None = None) -> DataBatch:
        batch = super().sample(n, generator=generator)
        return DataBatch(x_1=batch.x_1, cond=None if batch.cond is None else batch.cond + 1)


class FlatBatches(GaussianMixture):
    """Gaussian mixture whose batches are flattened to ``[B * d]``."""

    name = "flat-batches"

    def batches(self, **kwargs: Any) -> Iterator[DataBatch]:
        return (DataBatch(x_1=b.x_1.reshape(-1), cond=b.cond) for b in super().batches(**kwargs))


# ------------------------------------------------------------------------------------- metrics
class UnsortedSW2(SlicedWasserstein2):
    """Sliced Wasserstein-2 that pairs the projections in row order instead of sorting them."""

    name = "unsorted-sw2"

    def __call__(self, *, samples: Tensor, reference: Tensor, generator: torch.Generator | None = None) -> Tensor:
        x, y = samples.double().reshape(len(samples), -1), reference.double().reshape(len(reference), -1)
        n = min(len(x), len(y))
        theta = self._directions(x.shape[1], x.device, generator)
        return ((x[:n] @ theta - y[:n] @ theta) ** 2).mean().sqrt()


class GlobalRngSW2(SlicedWasserstein2):
    """Sliced Wasserstein-2 that ignores the generator and draws its directions from the global one."""

    name = "global-rng-sw2"

    def __call__(self, *, samples: Tensor, reference: Tensor, generator: torch.Generator | None = None) -> Tensor:
        return super().__call__(samples=samples, reference=reference, generator=None)


class InPlaceEnergy(EnergyDistance):
    """Energy distance that centres its inputs in place."""

    name = "in-place-energy"

    def __call__(self, *, samples: Tensor, reference: Tensor, generator: torch.Generator | None = None) -> Tensor:
        shift = reference.mean(0, keepdim=True)
        samples.sub_(shift)
        reference.sub_(shift)
        return super().__call__(samples=samples, reference=reference, generator=generator)


class PerDimensionMMD(MMD):
    """MMD that returns one value per coordinate instead of a scalar."""

    name = "per-dimension-mmd"

    def __call__(self, *, samples: Tensor, reference: Tensor, generator: torch.Generator | None = None) -> Tensor:
        return torch.stack(
            [super(PerDimensionMMD, self).__call__(samples=samples[:, i : i + 1], reference=reference[:, i : i + 1]) for i in range(samples.shape[1])]
        )


# --------------------------------------------------------------------------------- expectations
#: Per broken component: (suite, check) pairs that must raise ``AssertionError`` on it.
EXPECTED_FAILURES: dict[type, list[tuple[str, str]]] = {
    SqueezingBackbone: [(B, "test_output_shape_and_dtype")],
    FusedAttentionBackbone: [(B, "test_jvp_matches_finite_differences"), (B, "test_jvp_in_float32")],
    BatchCentringBackbone: [(B, "test_rows_are_independent")],
    Float32OutputBackbone: [(B, "test_output_shape_and_dtype")],
    UnusedParameterBackbone: [(B, "test_gradients_reach_every_parameter")],
    IgnoresContextTimeBackbone: [(B, "test_depends_on_every_input")],
    IgnoresLabelsBackbone: [(B, "test_class_labels")],
    DropoutInEvalBackbone: [(B, "test_eval_mode_is_deterministic")],
    PlainTensorStateBackbone: [(B, "test_rebuilds_from_options_and_state_dict")],
    WrongTangentEulerianLoss: [(L, "test_zero_on_the_exact_map"), (L, "test_exact_map_is_stationary")],
    ContextDriftMeanFlowLoss: [(L, "test_exact_map_is_stationary")],
    GlobalRngLoss: [(L, "test_uses_the_batch_generator")],
    UndeclaredJvpLoss: [(L, "test_runs_without_forward_mode")],
    AttachedTermsLoss: [(L, "test_finite_scalar_with_gradients_and_detached_terms")],
    DiagonalOnlyLoss: [(L, "test_positive_off_the_exact_map")],
    FlippedNoiseTarget: [(T, "test_unbiased_for_the_exact_drift")],
    UnconditionalTeacher: [(T, "test_unbiased_for_the_exact_drift")],
    AttachedDataTarget: [(T, "test_shape_dtype_and_detached")],
    GlobalRngMixture: [
        (D, "test_batches_reproducible_per_seed"),
        (D, "test_ranks_get_disjoint_data"),
        (D, "test_sample_shape_and_reproducible"),
    ],
    SameDataOnEveryRank: [(D, "test_ranks_get_disjoint_data")],
    OneBasedLabels: [(D, "test_batches_shape_and_labels"), (D, "test_sample_shape_and_reproducible")],
    FlatBatches: [(D, "test_batches_shape_and_labels"), (D, "test_ranks_get_disjoint_data")],
    UnsortedSW2: [(M, "test_noise_floor_below_shifted_laws"), (M, "test_row_order_does_not_matter")],
    GlobalRngSW2: [(M, "test_generator_reproducibility")],
    InPlaceEnergy: [(M, "test_inputs_unchanged")],
    PerDimensionMMD: [(M, "test_finite_scalar"), (M, "test_noise_floor_below_shifted_laws")],
}

#: Checks that must still pass on a broken component: each bug fails the checks about it only.
STILL_PASSING: list[tuple[type, str, str]] = [
    (FusedAttentionBackbone, B, "test_output_shape_and_dtype"),
    (IgnoresContextTimeBackbone, B, "test_rows_are_independent"),
    (DropoutInEvalBackbone, B, "test_output_shape_and_dtype"),
    (ContextDriftMeanFlowLoss, L, "test_zero_on_the_exact_map"),
    (ContextDriftMeanFlowLoss, L, "test_positive_off_the_exact_map"),
    (DiagonalOnlyLoss, L, "test_zero_on_the_exact_map"),
    (UndeclaredJvpLoss, L, "test_exact_map_is_stationary"),
    (UnconditionalTeacher, T, "test_shape_dtype_and_detached"),
    (AttachedDataTarget, T, "test_unbiased_for_the_exact_drift"),
    (SameDataOnEveryRank, D, "test_batches_reproducible_per_seed"),
    (GlobalRngMixture, D, "test_batches_shape_and_labels"),
    (IgnoresLabelsBackbone, B, "test_gradients_reach_every_parameter"),
    (GlobalRngSW2, M, "test_noise_floor_below_shifted_laws"),
    (InPlaceEnergy, M, "test_noise_floor_below_shifted_laws"),
]


class BrokenKindsPlugin:
    """A plugin registering every broken component through the ordinary hooks."""

    @hookimpl
    def mfm_backbones(self) -> list[type]:
        return [c for c in EXPECTED_FAILURES if issubclass(c, MLPBackbone)]

    @hookimpl
    def mfm_consistency_losses(self) -> list[type]:
        return [c for c in EXPECTED_FAILURES if issubclass(c, (EulerianLoss, SemigroupLoss, MeanFlowLoss))]

    @hookimpl
    def mfm_diagonal_targets(self) -> list[type]:
        return [c for c in EXPECTED_FAILURES if issubclass(c, (DataTarget, TeacherTarget))]

    @hookimpl
    def mfm_data_sources(self) -> list[type]:
        return [c for c in EXPECTED_FAILURES if issubclass(c, GaussianMixture)]

    @hookimpl
    def mfm_metrics(self) -> list[type]:
        return [c for c in EXPECTED_FAILURES if issubclass(c, (SlicedWasserstein2, EnergyDistance, MMD))]
