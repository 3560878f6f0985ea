"""Diagonal targets: the drift ``bbar_s(y; t, x)`` the MFM's diagonal ``v_{s,s}`` regresses on."""

from __future__ import annotations

from typing import Any, Literal

import attrs
import torch
from torch import Tensor

from mfm_framework.errors import MfmUserError
from mfm_framework.interfaces import DiagonalTarget, ExactData

__all__ = ["DataTarget", "TeacherTarget", "TeacherOptions"]


class DataTarget(DiagonalTarget):
    """Self-distillation from data pairs: ``dabar_s eps + dbbar_s x_1``.

    Unbiased for the conditional drift because ``x_1 | x`` is a draw of the posterior. Shapes
    ``[B, *D]``. Cost: no network evaluations.
    """

    name = "data"

    def drift(self, *, s: Tensor, y: Tensor, t: Tensor, x: Tensor, eps: Tensor, x_1: Tensor, inner: Any, cond: Tensor | None = None) -> Tensor:
        return inner.velocity_target(x_0=eps, x_1=x_1, t=s).detach()


def _check_teacher(instance: Any, attribute: Any, value: str | None) -> None:
    if instance.source == "checkpoint" and not value:
        raise ValueError("'checkpoint' must be the path of a model.pt when source = \"checkpoint\"")


@attrs.frozen(kw_only=True)
class TeacherOptions:
    """Options of :class:`TeacherTarget`.

    Attributes:
        source: ``"data"`` (the data law's exact velocity; needs a data source with closed forms)
            or ``"checkpoint"`` (the ``t = 0`` slice of a trained MFM).
        checkpoint: path of a ``model.pt`` written by an earlier run (``source = "checkpoint"``).
        s_max: the inner time is clamped to at most ``s_max`` where the drift divides by ``abar_s``.
    """

    source: Literal["data", "checkpoint"] = "data"
    checkpoint: str | None = attrs.field(default=None, validator=_check_teacher)
    s_max: float = attrs.field(default=0.999, validator=[attrs.validators.gt(0), attrs.validators.lt(1)])


class TeacherTarget(DiagonalTarget):
    """GLASS drift from a frozen unconditional model (MATH.md section 3).

    Fuses the context ``(t, x)`` and the inner state ``(s, y)`` into ``(t*, x*)``, takes the
    teacher's denoiser ``Dhat = D_{t*}(x*)`` and returns the inner velocity
    ``dabar_s (y - bbar_s Dhat) / abar_s + dbbar_s Dhat``, in float32 or float64 under
    ``torch.no_grad()``. Shapes ``[B, *D]``. Cost: 1 teacher NFE per example (none for ``source =
    "data"``, whose velocity is exact).
    """

    name = "teacher"
    Options = TeacherOptions

    def __init__(self, options: TeacherOptions | None = None) -> None:
        super().__init__(options)
        self._denoiser: Any = None
        self._interpolant: Any = None

    def prepare(self, *, model: Any, data: Any, device: torch.device) -> None:
        self._interpolant = model.interpolant
        if self.options.source == "data":
            if not isinstance(data, ExactData):
                raise MfmUserError(
                    f"the teacher target with source = \"data\" needs a data source with an exact velocity; "
                    f"{type(data).__name__} ({getattr(data, 'name', '?')}) has none: use source = \"checkpoint\""
                )
            interp = model.interpolant
            self._denoiser = lambda t, x, cond: data.denoiser(t=t, x=x, interpolant=interp)
            return
        from mfm_framework.checkpoint import load_flow_map

        teacher = load_flow_map(self.options.checkpoint, device=device)
        if type(teacher.interpolant) is not type(model.interpolant):
            raise MfmUserError(
                f"teacher checkpoint {self.options.checkpoint} uses the {teacher.interpolant.name!r} interpolant, "
                f"the model being trained uses {model.interpolant.name!r}: they must match"
            )
        teacher.requires_grad_(False).eval()
        self._denoiser = lambda t, x, cond: teacher.denoise(t=t, x=x, cond=cond)

    def drift(self, *, s: Tensor, y: Tensor, t: Tensor, x: Tensor, eps: Tensor, x_1: Tensor, inner: Any, cond: Tensor | None = None) -> Tensor:
        if self._denoiser is None:
            raise RuntimeError("TeacherTarget.prepare() must be called before drift()")
        with torch.no_grad():
            dtype = torch.promote_types(y.dtype, torch.float32)
            y32, x32 = y.to(dtype), x.to(dtype)
            fusion = self._interpolant.glass_fusion(t=t.to(dtype), x=x32, s=s.to(dtype), y=y32, inner=inner)
            dhat = self._denoiser(fusion.t_star, fusion.x_star, cond)
            s_c = s.to(dtype).clamp(max=self.options.s_max)
            return inner.velocity_from_denoiser(t=s_c, x=y32, denoiser=dhat.to(dtype)).to(y.dtype)
