"""Checkpoints and model files: written atomically, read with ``weights_only=True``.

- A *training checkpoint* (``checkpoints/step-NNNNNNN.pt``) holds everything needed to continue a
  run bit-identically: model, EMA, optimizer and scheduler states, the step and the RNG states.
- A *model file* (``model.pt``) holds the EMA weights and the resolved ``[model]`` table, so
  :func:`load_flow_map` rebuilds the meta flow map without the run spec (for teachers, steering).
"""

from __future__ import annotations

import io
import re
from pathlib import Path
from typing import Any

import torch

from mfm_framework.errors import MfmUserError
from mfm_framework.io import atomic_write_bytes

__all__ = [
    "save_payload",
    "load_payload",
    "checkpoint_path",
    "latest_checkpoint",
    "prune_checkpoints",
    "save_flow_map",
    "load_flow_map",
]

CHECKPOINT_FORMAT = "mfm-checkpoint"
MODEL_FORMAT = "mfm-model"
_STEP_RE = re.compile(r"^step-(\d+)\.pt$")


def save_payload(path: str | Path, payload: dict[str, Any]) -> None:
    """``torch.save`` to memory, then an atomic write: a crash never leaves a truncated file."""
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    atomic_write_bytes(path, buffer.getvalue())


def load_payload(path: str | Path, *, expected_format: str, map_location: Any = "cpu") -> dict[str, Any]:
    """Load a payload with ``weights_only=True`` and check its format.

    Raises:
        MfmUserError: missing, unreadable, corrupt or of another format, naming the file.
    """
    path = Path(path)
    if not path.is_file():
        raise MfmUserError(f"checkpoint {path} does not exist")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # truncated, garbage, or not a torch file
        raise MfmUserError(f"checkpoint {path} is corrupt or not a torch file: {type(exc).__name__}: {str(exc)[:200]}") from None
    if not isinstance(payload, dict) or payload.get("format") != expected_format:
        found = payload.get("format") if isinstance(payload, dict) else type(payload).__name__
        raise MfmUserError(f"{path} is not an {expected_format} file (format: {found!r})")
    return payload


def checkpoint_path(directory: Path, step: int) -> Path:
    return directory / f"step-{step:07d}.pt"


def latest_checkpoint(directory: Path) -> Path | None:
    """The checkpoint with the highest step in ``directory``, or None."""
    if not directory.is_dir():
        return None
    found = [(int(m.group(1)), p) for p in directory.iterdir() if (m := _STEP_RE.match(p.name))]
    return max(found)[1] if found else None


def prune_checkpoints(directory: Path, keep: int) -> None:
    """Delete all but the ``keep`` most recent checkpoints."""
    found = sorted((int(m.group(1)), p) for p in directory.iterdir() if (m := _STEP_RE.match(p.name)))
    for _, path in found[: max(0, len(found) - keep)]:
        path.unlink(missing_ok=True)


def save_flow_map(path: str | Path, *, model: torch.nn.Module, model_table: dict[str, Any], step: int) -> None:
    """Write a model file: EMA weights plus the resolved ``[model]`` table and data shape."""
    save_payload(
        path,
        {
            "format": MODEL_FORMAT,
            "version": 1,
            "model": model_table,
            "data_shape": list(model.data_shape),
            "num_classes": model.backbone.num_classes,
            "step": step,
            "state_dict": model.state_dict(),
        },
    )


def load_flow_map(path: str | Path, *, device: Any = "cpu", registry: Any = None) -> Any:
    """Rebuild a :class:`~mfm_framework.model.MetaFlowMap` from a model file (frozen, eval mode).

    Raises:
        MfmUserError: the file is missing or corrupt, or names components that are not installed.
    """
    from mfm_framework.engine.build import build_model_from_table

    payload = load_payload(path, expected_format=MODEL_FORMAT, map_location=device)
    model = build_model_from_table(
        payload["model"],
        data_shape=tuple(payload["data_shape"]),
        num_classes=payload["num_classes"],
        registry=registry,
        source=str(path),
    )
    try:
        model.load_state_dict(payload["state_dict"])
    except RuntimeError as exc:
        raise MfmUserError(f"model file {path} does not match its own [model] table: {str(exc)[:300]}") from None
    return model.to(device).eval().requires_grad_(False)
