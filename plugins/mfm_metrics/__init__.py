"""First-party metrics: ``sw2`` (sliced Wasserstein-2), ``mmd`` (unbiased multi-scale RBF MMD^2)
and ``energy`` (energy distance).

torchmetrics has none of these three (its only MMD is the polynomial-kernel KID on Inception
features), so they are written here with plain torch ops.
"""

from mfm_metrics.distances import (
    MMD,
    EnergyDistance,
    EnergyOptions,
    MMDOptions,
    SlicedWasserstein2,
    SlicedWasserstein2Options,
)
from mfm_framework import hookimpl

__all__ = [
    "MMD",
    "EnergyDistance",
    "EnergyOptions",
    "MMDOptions",
    "SlicedWasserstein2",
    "SlicedWasserstein2Options",
    "mfm_metrics",
]


@hookimpl
def mfm_metrics() -> list[type]:
    return [SlicedWasserstein2, MMD, EnergyDistance]
