"""Consistency conditions of flow maps, each as ``student - sg(target)`` (MATH.md section 4).

Every loss adds the diagonal term (``v_{s,s}`` against the diagonal target's drift) through
:class:`~mfm_framework.objectives.FlowMapObjective`.
"""

from __future__ import annotations

from typing import Literal

import attrs
import torch
from torch import Tensor

from mfm_framework.interfaces import TrainingBatch
from mfm_framework.objectives import FlowMapObjective, InnerDraw, ObjectiveOptions, gap, jvp

__all__ = ["EulerianLoss", "MeanFlowLoss", "LagrangianLoss", "SemigroupLoss", "EulerianOptions"]


@attrs.frozen(kw_only=True)
class EulerianOptions(ObjectiveOptions):
    """Options of :class:`EulerianLoss`.

    Attributes:
        drift: the drift ``b`` the map is transported along: ``"self"`` (the model's own diagonal
            ``v_{s,s}(y)``, detached) or ``"target"`` (the diagonal target's drift: the data pair's
            conditional velocity or the teacher's GLASS drift).
    """

    drift: Literal["self", "target"] = "self"


def _eulerian_residual(model: object, batch: TrainingBatch, draw: InnerDraw, b: Tensor) -> Tensor:
    def v_of(s: Tensor, y: Tensor) -> Tensor:
        return model.velocity(s=s, u=draw.u, y=y, t=batch.t, x=batch.x, cond=batch.cond)

    v, dv = jvp(v_of, (draw.s, draw.y), (torch.ones_like(draw.s), b))
    target = b + gap(draw, b) * dv
    return v - target.detach()


class EulerianLoss(FlowMapObjective):
    """Eulerian self-distillation: ``v_{s,u}(y)`` against ``sg(b + (u - s)[d_s v + (grad_y v) b])``.

    The target is the Eulerian equation ``d_s X_{s,u} + (grad_y X_{s,u}) b = 0`` solved for ``v``;
    one ``torch.func.jvp`` with tangents ``(ds = 1, dy = b)`` gives the student (its primal output)
    and the target's derivative together. Cost per example: 1 forward (diagonal) + 1 forward-JVP
    (about 3 forwards) + 1 forward for ``drift = "self"``.
    """

    name = "eulerian"
    Options = EulerianOptions
    requires_jvp = True

    def consistency_residual(self, model: object, batch: TrainingBatch, draw: InnerDraw) -> Tensor:
        if self.options.drift == "self":
            with torch.no_grad():
                b = model.velocity(s=draw.s, u=draw.s, y=draw.y, t=batch.t, x=batch.x, cond=batch.cond)
        else:
            b = self.target_drift(model, batch, draw)
        return _eulerian_residual(model, batch, draw, b)


class MeanFlowLoss(FlowMapObjective):
    """MeanFlow: the Eulerian condition along the data pair's conditional velocity.

    ``b = dabar_s eps + dbbar_s x_1`` (valid since ``x_1 | x`` is a posterior draw); student
    ``v_{s,u}(y)``, target ``sg(b + (u - s)[d_s v + (grad_y v) b])``. Cost per example: 1 forward
    (diagonal) + 1 forward-JVP.
    """

    name = "meanflow"
    requires_jvp = True

    def consistency_residual(self, model: object, batch: TrainingBatch, draw: InnerDraw) -> Tensor:
        b = model.inner.velocity_target(x_0=draw.eps, x_1=batch.x_1, t=draw.s)
        return _eulerian_residual(model, batch, draw, b)


class LagrangianLoss(FlowMapObjective):
    """Lagrangian self-distillation: ``d_u X_{s,u}(y) = v_{u,u}(X_{s,u}(y))``.

    Written with the student ``v_{s,u}(y)`` (as the other losses): since
    ``d_u X_{s,u} = v_{s,u} + (u - s) d_u v_{s,u}``, the target is
    ``sg(v_{u,u}(X_{s,u}(y)) - (u - s) d_u v_{s,u}(y))`` and the residual equals
    ``d_u X_{s,u}(y) - v_{u,u}(X_{s,u}(y))``. One JVP with tangent ``du = 1``. Cost per example:
    1 forward (diagonal) + 1 forward-JVP + 1 forward (``v_{u,u}``).
    """

    name = "lagrangian"
    requires_jvp = True

    def consistency_residual(self, model: object, batch: TrainingBatch, draw: InnerDraw) -> Tensor:
        def v_of(u: Tensor) -> Tensor:
            return model.velocity(s=draw.s, u=u, y=draw.y, t=batch.t, x=batch.x, cond=batch.cond)

        v, dv_du = jvp(v_of, (draw.u,), (torch.ones_like(draw.u),))
        h = gap(draw, v)
        with torch.no_grad():
            end = draw.y + h * v
            v_end = model.velocity(s=draw.u, u=draw.u, y=end, t=batch.t, x=batch.x, cond=batch.cond)
        target = v_end - h * dv_du
        return v - target.detach()


class SemigroupLoss(FlowMapObjective):
    """Progressive (semigroup) self-distillation: ``X_{s,u} = X_{w,u} o X_{s,w}``.

    ``w = s + g (u - s)``, ``g ~ U(0, 1)``; student ``v_{s,u}(y)``, target
    ``sg(g v_{s,w}(y) + (1 - g) v_{w,u}(X_{s,w}(y)))``. No JVP. Cost per example: 1 forward
    (diagonal) + 3 forwards.
    """

    name = "semigroup"

    def consistency_residual(self, model: object, batch: TrainingBatch, draw: InnerDraw) -> Tensor:
        g = torch.rand(draw.s.shape, generator=batch.generator, device=draw.s.device, dtype=draw.s.dtype)
        w = draw.s + g * (draw.u - draw.s)
        kw = dict(t=batch.t, x=batch.x, cond=batch.cond)
        with torch.no_grad():
            v_sw = model.velocity(s=draw.s, u=w, y=draw.y, **kw)
            mid = draw.y + (w - draw.s).reshape(-1, *([1] * (draw.y.ndim - 1))) * v_sw
            v_wu = model.velocity(s=w, u=draw.u, y=mid, **kw)
            gp = g.reshape(-1, *([1] * (draw.y.ndim - 1)))
            target = gp * v_sw + (1 - gp) * v_wu
        return model.velocity(s=draw.s, u=draw.u, y=draw.y, **kw) - target
