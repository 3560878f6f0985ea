"""First-party backbones: ``mlp`` for vector data."""

from mfm_backbones.mlp import MLPBackbone
from mfm_framework import hookimpl

__all__ = ["MLPBackbone", "mfm_backbones"]


@hookimpl
def mfm_backbones() -> list[type]:
    return [MLPBackbone]
