"""First-party interpolants: ``linear`` and ``trigonometric``."""

from mfm_interpolants.schedules import LinearInterpolant, TrigonometricInterpolant
from mfm_framework import hookimpl

__all__ = ["LinearInterpolant", "TrigonometricInterpolant", "mfm_interpolants"]


@hookimpl
def mfm_interpolants() -> list[type]:
    return [LinearInterpolant, TrigonometricInterpolant]
