"""First-party consistency losses: ``eulerian``, ``meanflow``, ``lagrangian``, ``semigroup``."""

from mfm_framework import hookimpl
from mfm_losses.consistency import EulerianLoss, LagrangianLoss, MeanFlowLoss, SemigroupLoss

__all__ = ["EulerianLoss", "LagrangianLoss", "MeanFlowLoss", "SemigroupLoss", "mfm_consistency_losses"]


@hookimpl
def mfm_consistency_losses() -> list[type]:
    return [EulerianLoss, MeanFlowLoss, LagrangianLoss, SemigroupLoss]
