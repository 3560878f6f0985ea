"""First-party integrators: ``euler``, ``heun`` and ``euler-maruyama``."""

from mfm_integrators.steppers import EulerIntegrator, EulerMaruyamaIntegrator, HeunIntegrator
from mfm_framework import hookimpl

__all__ = ["EulerIntegrator", "EulerMaruyamaIntegrator", "HeunIntegrator", "mfm_integrators"]


@hookimpl
def mfm_integrators() -> list[type]:
    return [EulerIntegrator, HeunIntegrator, EulerMaruyamaIntegrator]
