"""Shared machinery of meta-flow-map objectives (MATH.md section 4).

:class:`FlowMapObjective` is a template for consistency losses: it draws the diagonal term and the
off-diagonal times, applies the adaptive weighting, and leaves one method to a concrete loss:
the residual ``student - sg(target)`` of its consistency condition.
"""

from __future__ import annotations

import abc
import warnings
from collections.abc import Callable, Sequence
from typing import Literal

import attrs
import torch
from torch import Tensor

from mfm_framework.interfaces import ConsistencyLoss, LossTerms, TrainingBatch
from mfm_framework.interfaces._time import pad_time

# The first forward-mode AD call makes torch load its JVP decompositions, which go through the
# deprecated ``torch.jit.script`` and warn about torch's own internals; nothing a user can act on.
warnings.filterwarnings("ignore", message=r"`torch\.jit\.script` is deprecated", category=FutureWarning)

__all__ = ["ObjectiveOptions", "FlowMapObjective", "InnerDraw", "adaptive_loss", "gap", "jvp"]


def adaptive_loss(residual: Tensor, *, c: float, p: float) -> Tensor:
    """Adaptively weighted mean square: ``mean_b sg((|D_b|^2 + c)^-p) |D_b|^2``.

    Args:
        residual: ``D``, ``[B, *D]``; ``|D_b|^2`` sums over all non-batch dimensions.
        c, p: the weighting constants (``p = 0`` is the plain mean squared norm).
    """
    sq = residual.reshape(residual.shape[0], -1).pow(2).sum(dim=1)
    if p == 0:
        return sq.mean()
    weight = (sq.detach() + c).pow(-p)
    return (weight * sq).mean()


def jvp(
    fn: Callable[..., Tensor], primals: Sequence[Tensor], tangents: Sequence[Tensor], *, forward_ad: bool = False
) -> tuple[Tensor, Tensor]:
    """Forward-mode Jacobian-vector product ``(fn(*primals), J fn . tangents)``.

    Uses ``torch.func.jvp`` (the fastest here), or ``torch.autograd.forward_ad`` dual tensors with
    ``forward_ad=True`` (which also work through a DDP wrapper). Either way the primal output keeps
    its graph, so it can serve as the differentiable student.
    """
    if not forward_ad:
        return torch.func.jvp(fn, tuple(primals), tuple(tangents))
    import torch.autograd.forward_ad as fwAD

    with fwAD.dual_level():
        out = fn(*[fwAD.make_dual(p, t) for p, t in zip(primals, tangents)])
        unpacked = fwAD.unpack_dual(out)
        tangent = unpacked.tangent if unpacked.tangent is not None else torch.zeros_like(unpacked.primal)
        return unpacked.primal, tangent


@attrs.frozen(kw_only=True)
class ObjectiveOptions:
    """Options shared by the consistency losses.

    Attributes:
        c: adaptive-weighting constant (paper: 0.01).
        p_diagonal: adaptive-weighting power of the diagonal term (paper: 0.5).
        p_consistency: adaptive-weighting power of the consistency term (paper: 1).
        consistency_weight: multiplier of the consistency term.
        curriculum: fraction of training over which the largest ``u - s`` widens linearly from 0
            (diagonal only) to 1; 0 disables the curriculum.
        pairs: how the off-diagonal times ``s < u`` are drawn: ``"sorted"`` (two sorted
            uniforms: the gap ``u - s`` has density ``2 (1 - h)``, so the one-step corner
            ``(0, 1)`` is almost never seen) or ``"uniform-gap"`` (``h ~ U(0, 1)``, then
            ``s ~ U(0, 1 - h)``: every gap equally often, long jumps included).
    """

    c: float = attrs.field(default=0.01, validator=attrs.validators.gt(0))
    p_diagonal: float = attrs.field(default=0.5, validator=attrs.validators.ge(0))
    p_consistency: float = attrs.field(default=1.0, validator=attrs.validators.ge(0))
    consistency_weight: float = attrs.field(default=1.0, validator=attrs.validators.ge(0))
    curriculum: float = attrs.field(default=0.0, validator=[attrs.validators.ge(0), attrs.validators.le(1)])
    pairs: Literal["sorted", "uniform-gap"] = "uniform-gap"


@attrs.frozen(kw_only=True)
class InnerDraw:
    """The off-diagonal draw: times ``s <= u`` ``[B]``, noise ``eps`` and ``y = y_s`` ``[B, *D]``."""

    s: Tensor
    u: Tensor
    eps: Tensor
    y: Tensor


class FlowMapObjective(ConsistencyLoss, abc.ABC):
    """Diagonal term plus a consistency term, each adaptively weighted (MATH.md section 4).

    Diagonal: ``s ~ U(0,1)``, fresh ``eps``, ``y = abar_s eps + bbar_s x_1``; residual
    ``v_{s,s}(y; t, x) - sg(target drift)``. Consistency: ``s < u`` (sorted uniforms, the gap
    scaled by the curriculum), fresh ``eps``, same context; residual from :meth:`consistency_residual`.
    """

    Options = ObjectiveOptions

    @abc.abstractmethod
    def consistency_residual(self, model: object, batch: TrainingBatch, draw: InnerDraw) -> Tensor:
        """``student - sg(target)`` of the consistency condition, ``[B, *D]``."""

    def draw_inner(self, model: object, batch: TrainingBatch, *, diagonal: bool) -> InnerDraw:
        x_1, gen = batch.x_1, batch.generator
        n = x_1.shape[0]
        if diagonal:
            s = torch.rand(n, generator=gen, device=x_1.device, dtype=x_1.dtype)
            u = s
        else:
            a, b = torch.rand(2, n, generator=gen, device=x_1.device, dtype=x_1.dtype)
            if self.options.pairs == "sorted":
                s, h = torch.minimum(a, b), (a - b).abs()
            else:
                h = a
                s = b * (1 - h)
            if self.options.curriculum > 0:
                h = h * min(1.0, batch.progress / self.options.curriculum)
            u = s + h
        eps = torch.randn(x_1.shape, generator=gen, device=x_1.device, dtype=x_1.dtype)
        y = model.inner.interpolate(x_0=eps, x_1=x_1, t=s)
        return InnerDraw(s=s, u=u, eps=eps, y=y)

    def target_drift(self, model: object, batch: TrainingBatch, draw: InnerDraw) -> Tensor:
        """The diagonal target's drift at the draw's ``(s, y)``, detached."""
        return batch.target.drift(
            s=draw.s, y=draw.y, t=batch.t, x=batch.x, eps=draw.eps, x_1=batch.x_1, inner=model.inner, cond=batch.cond
        ).detach()

    def __call__(self, model: object, batch: TrainingBatch) -> LossTerms:
        opts = self.options
        diag = self.draw_inner(model, batch, diagonal=True)
        pred = model.velocity(s=diag.s, u=diag.s, y=diag.y, t=batch.t, x=batch.x, cond=batch.cond)
        diag_residual = pred - self.target_drift(model, batch, diag)
        draw = self.draw_inner(model, batch, diagonal=False)
        cons_residual = self.consistency_residual(model, batch, draw)
        diag_loss = adaptive_loss(diag_residual, c=opts.c, p=opts.p_diagonal)
        cons_loss = adaptive_loss(cons_residual, c=opts.c, p=opts.p_consistency)
        total = diag_loss + opts.consistency_weight * cons_loss
        mse = lambda r: r.detach().reshape(r.shape[0], -1).pow(2).sum(1).mean()  # noqa: E731
        return LossTerms(
            total=total,
            terms={
                "diagonal": diag_loss.detach(),
                "consistency": cons_loss.detach(),
                "diagonal_mse": mse(diag_residual),
                "consistency_mse": mse(cons_residual),
            },
        )


def gap(draw: InnerDraw, like: Tensor) -> Tensor:
    """``u - s`` padded to broadcast against ``like``."""
    return pad_time(draw.u - draw.s, like)
