"""Broadcasting of per-sample times against batched tensors."""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["as_time", "pad_time"]


def as_time(t: Tensor | float, like: Tensor) -> Tensor:
    """Return ``t`` as a tensor on ``like``'s device with ``like``'s floating dtype."""
    if not torch.is_tensor(t):
        return torch.tensor(t, dtype=like.dtype, device=like.device)
    if t.dtype != like.dtype and like.is_floating_point():
        t = t.to(like.dtype)
    return t


def pad_time(t: Tensor | float, like: Tensor) -> Tensor:
    """Reshape times to broadcast against a batch.

    Args:
        t: a scalar, or a tensor of shape ``[B]`` (one time per sample), or any shape that already
            broadcasts against ``like``.
        like: a batch of shape ``[B, *D]``.

    Returns:
        ``t`` with shape ``[]`` or ``[B, 1, ..., 1]`` (``len(D)`` trailing ones).
    """
    t = as_time(t, like)
    if t.ndim == 1 and like.ndim > 1:
        if t.shape[0] not in (1, like.shape[0]):
            raise ValueError(
                f"times of shape {tuple(t.shape)} do not match a batch of shape {tuple(like.shape)}"
            )
        return t.reshape(t.shape[0], *([1] * (like.ndim - 1)))
    return t
