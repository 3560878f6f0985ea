"""Consistency losses against an exact flow map (Gaussian data: affine flow maps, closed form).

The interface-level checks of every loss (finite scalar, gradients, ~0 on the exact map, positive
off it, stationary at it, seeds, ``requires_jvp``) are the consistency-loss conformance suite
(tests/plugins/test_conformance.py); this module checks what only the first-party
losses have: residuals at interior contexts, the teacher, the curriculum, the pair distributions,
the adaptive weighting.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import pytest
import torch

from mfm_framework.interfaces import TrainingBatch
from mfm_framework.kinds import kind_by_name
from mfm_framework.model import MetaFlowMap
from mfm_framework.objectives import InnerDraw, adaptive_loss
from mfm_framework.plugins import default_plugin_system
from mfm_framework.testing import ConsistencyLossConformance
from mfm_framework.testing.exact import GaussianFlowMapBackbone, GaussianFlowMapOptions

REG = default_plugin_system().registry
LOSSES = kind_by_name("consistency-loss")
DIM, N = 3, 4096


def component(kind: str, name: str, **options):
    cls = REG.get(kind_by_name(kind), name).cls
    return cls(cls.Options(**options))


def exact_model(interp: str = "linear", **options) -> MetaFlowMap:
    outer, inner = component("interpolant", interp), component("interpolant", "linear")
    backbone = GaussianFlowMapBackbone(GaussianFlowMapOptions(mean=0.5, std=0.7, **options), data_shape=(DIM,))
    return MetaFlowMap(backbone.bind(interpolant=outer, inner=inner), outer, inner).double()


def gaussian_batch(model: MetaFlowMap, seed: int) -> TrainingBatch:
    gen = torch.Generator().manual_seed(seed)
    x_1 = 0.5 + 0.7 * torch.randn(N, DIM, generator=gen, dtype=torch.float64)
    t = torch.rand(N, generator=gen, dtype=torch.float64).clamp(0.02, 0.98)
    x = model.interpolant.interpolate(x_0=torch.randn(N, DIM, generator=gen, dtype=torch.float64), x_1=x_1, t=t)
    return TrainingBatch(x_1=x_1, t=t, x=x, target=component("diagonal-target", "data"), generator=gen)


def draw(model: MetaFlowMap, batch: TrainingBatch, seed: int) -> InnerDraw:
    gen = torch.Generator().manual_seed(seed)
    a, b = torch.rand(2, N, generator=gen, dtype=torch.float64) * 0.98
    s, u = torch.minimum(a, b), torch.maximum(a, b)
    eps = torch.randn(N, DIM, generator=gen, dtype=torch.float64)
    return InnerDraw(s=s, u=u, eps=eps, y=model.inner.interpolate(x_0=eps, x_1=batch.x_1, t=s))


@pytest.mark.parametrize("name,options", [("eulerian", {}), ("eulerian", {"drift": "self"}), ("lagrangian", {}), ("semigroup", {})])
@pytest.mark.parametrize("interp", ["linear", "trigonometric"])
def test_self_consistency_residual_vanishes_for_the_exact_map(name, options, interp):
    loss = component("consistency-loss", name, **options)
    model = exact_model(interp)
    batch = gaussian_batch(model, seed=1)
    residual = loss.consistency_residual(model, batch, draw(model, batch, seed=2))
    assert residual.abs().max() < 1e-6

    wrong = exact_model(interp, bend=0.2)
    residual = loss.consistency_residual(wrong, batch, draw(wrong, batch, seed=2))
    assert residual.pow(2).sum(1).mean() > 1e-4


class TestEulerianAlongTheTargetDrift(ConsistencyLossConformance):
    """The consistency-loss suite on ``eulerian`` with ``drift = "target"`` (the default options run in
    test_conformance.py): exact at t = 1, stationary at the exact map with data-pair targets."""

    distribution = "mfm-framework"
    only = ("eulerian",)
    example_options: ClassVar[Mapping[str, Mapping[str, Any]]] = {"eulerian": {"drift": "target"}}


@pytest.mark.parametrize("name", ["eulerian", "meanflow", "lagrangian", "semigroup"])
def test_first_party_losses_log_their_terms(name):
    """Finiteness and gradients are in the suite; the first-party losses also log these four terms."""
    loss = component("consistency-loss", name)
    model = exact_model()
    terms = loss(model, gaussian_batch(model, seed=5))
    assert set(terms.terms) == {"diagonal", "consistency", "diagonal_mse", "consistency_mse"}
    # the diagonal term with the data target is the irreducible conditional variance: positive
    assert terms.terms["diagonal_mse"] > 0


def test_teacher_target_makes_every_loss_vanish_on_the_exact_map():
    """With the exact teacher (GLASS on the exact Gaussian velocity) the whole loss is ~0."""
    data_cls = REG.get(kind_by_name("data-source"), "gmm").cls
    data = data_cls(data_cls.Options(preset="custom", means=((0.5, 0.5, 0.5),), std=0.7))
    model = exact_model()
    teacher = component("diagonal-target", "teacher")
    teacher.prepare(model=model, data=data, device=torch.device("cpu"))
    batch = gaussian_batch(model, seed=6)
    batch = TrainingBatch(x_1=batch.x_1, t=batch.t, x=batch.x, target=teacher, generator=batch.generator)
    for name in ["eulerian", "lagrangian", "semigroup"]:
        loss = component("consistency-loss", name, **({"drift": "target"} if name == "eulerian" else {}))
        d = draw(model, batch, seed=7)
        target = teacher.drift(s=d.s, y=d.y, t=batch.t, x=batch.x, eps=d.eps, x_1=batch.x_1, inner=model.inner)
        diag = model.velocity(s=d.s, u=d.s, y=d.y, t=batch.t, x=batch.x)
        assert (diag - target).abs().max() < 1e-5
        assert loss.consistency_residual(model, batch, d).abs().max() < 1e-5


def test_curriculum_starts_on_the_diagonal():
    loss = component("consistency-loss", "semigroup", curriculum=0.5)
    model = exact_model()
    batch = gaussian_batch(model, seed=8)
    early = loss.draw_inner(model, _with_progress(batch, 0.0), diagonal=False)
    assert torch.equal(early.s, early.u)
    mid = loss.draw_inner(model, _with_progress(batch, 0.25), diagonal=False)
    assert (mid.u - mid.s).max() <= 0.5 + 1e-12 and (mid.u - mid.s).max() > 0.4
    late = loss.draw_inner(model, _with_progress(batch, 0.9), diagonal=False)
    assert (late.u - late.s).max() > 0.9


@pytest.mark.parametrize("pairs", ["sorted", "uniform-gap"])
def test_pair_distributions(pairs):
    """``sorted``: the gap ``h = u - s`` has density ``2 (1 - h)``; ``uniform-gap``: ``h ~ U(0, 1)``
    and ``s ~ U(0, 1 - h)``. Both keep ``0 <= s <= u <= 1``."""
    loss = component("consistency-loss", "eulerian", pairs=pairs)
    model = exact_model()
    batch = gaussian_batch(model, seed=9)
    d = loss.draw_inner(model, batch, diagonal=False)
    h = d.u - d.s
    assert bool((d.s >= 0).all()) and bool((h >= 0).all()) and bool((d.u <= 1 + 1e-12).all())
    # CDF of the gap at a few points, against its closed form (N = 4096: 5 standard errors)
    for q in (0.25, 0.5, 0.75, 0.9):
        expected = 1 - (1 - q) ** 2 if pairs == "sorted" else q
        assert abs((h <= q).double().mean().item() - expected) < 5 * (expected * (1 - expected) / N) ** 0.5
    if pairs == "uniform-gap":  # given h, s is uniform on [0, 1 - h]: s / (1 - h) ~ U(0, 1)
        ratio = d.s / (1 - h)
        assert abs(ratio.mean().item() - 0.5) < 5 * (1 / 12 / N) ** 0.5
    assert torch.equal(d.y, model.inner.interpolate(x_0=d.eps, x_1=batch.x_1, t=d.s))


def _with_progress(batch: TrainingBatch, progress: float) -> TrainingBatch:
    import attrs

    return attrs.evolve(batch, progress=progress)


def test_adaptive_weighting():
    r = torch.tensor([[3.0, 4.0], [0.0, 1.0]], dtype=torch.float64)  # |r|^2 = 25, 1
    assert adaptive_loss(r, c=0.01, p=0.0) == pytest.approx(13.0)
    assert adaptive_loss(r, c=0.01, p=1.0) == pytest.approx((25 / 25.01 + 1 / 1.01) / 2)
    assert adaptive_loss(r, c=0.01, p=0.5) == pytest.approx((25 / 25.01**0.5 + 1 / 1.01**0.5) / 2)
    r.requires_grad_(True)
    adaptive_loss(r, c=0.01, p=1.0).backward()
    # the weight is a stop-gradient: d/dr [w |r|^2] = 2 w r
    assert torch.allclose(r.grad[0], 2 * r[0].detach() / 25.01 / 2)
