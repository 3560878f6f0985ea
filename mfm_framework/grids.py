"""Explicit time grids for integrators and samplers."""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["uniform_grid"]


def uniform_grid(
    start: float, end: float, steps: int, *, dtype: torch.dtype | None = None, device: torch.device | str | None = None
) -> Tensor:
    """``steps + 1`` evenly spaced times from ``start`` to ``end`` (inclusive), shape ``[steps + 1]``."""
    if steps < 1:
        raise ValueError(f"a time grid needs at least one step, got steps={steps}")
    return torch.linspace(start, end, steps + 1, dtype=dtype, device=device)
