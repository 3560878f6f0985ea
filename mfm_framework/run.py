"""Runs: the run directory, its context, and the execution of a validated spec.

A run directory holds ``resolved.toml`` and ``plugins.json`` (written before any work),
``metrics.jsonl`` (one JSON object per logged step or result) and, when the run ends,
``summary.json`` with ``"status": "complete"`` or ``"failed"``. A directory without
``summary.json`` is a run in progress or one that was killed.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import attrs
import torch

from mfm_framework.errors import MfmUserError
from mfm_framework.io import append_jsonl, atomic_write_json, atomic_write_text
from mfm_framework.plugins import PluginSystem
from mfm_framework.spec import LoadedSpec, RunSpec, dump_spec

__all__ = ["RunContext", "Stage", "prepare_run", "execute_run", "resolve_device", "format_summary"]

Stage = Callable[["RunContext"], dict[str, Any]]
"""A stage of a run: takes the context, does its work, returns its headline numbers."""


@attrs.define
class RunContext:
    """Everything a stage of a run needs.

    Attributes:
        spec: the validated spec.
        run_dir: the run directory.
        plugins: the plugin system (lifecycle hooks: ``plugins.hook.mfm_...``).
        device: where tensors live.
        dtype: the floating-point dtype of models and data.
        summary: headline numbers by stage; written to ``summary.json`` at the end.
    """

    spec: RunSpec
    run_dir: Path
    plugins: PluginSystem
    device: torch.device
    dtype: torch.dtype
    summary: dict[str, Any] = attrs.field(factory=dict)

    @property
    def metrics_path(self) -> Path:
        return self.run_dir / "metrics.jsonl"

    def log(self, record: dict[str, Any]) -> None:
        """Append one record (with a wall-clock ``time``) to ``metrics.jsonl``."""
        append_jsonl(self.metrics_path, {"time": round(time.time(), 3), **record})

    def generator(self, offset: int = 0) -> torch.Generator:
        """A generator on the run's device seeded with ``run.seed + offset``."""
        gen = torch.Generator(device=self.device)
        gen.manual_seed(self.spec.run.seed + offset)
        return gen


def resolve_device(name: str) -> torch.device:
    """``"auto"`` picks CUDA when available; an unavailable device is a user error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise MfmUserError(f"run.device is {name!r} but CUDA is not available here; use \"cpu\" or \"auto\"")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise MfmUserError(f"run.device is {name!r} but only {torch.cuda.device_count()} CUDA devices exist")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise MfmUserError(f"run.device is {name!r} but MPS is not available here")
    return device


def prepare_run(loaded: LoadedSpec, *, plugins: PluginSystem, run_dir: str | Path | None = None) -> RunContext:
    """Create the run directory and write ``resolved.toml`` and ``plugins.json`` before any work.

    Raises:
        MfmUserError: the run directory already holds something, or the device is unavailable.
            Nothing is written in that case.
    """
    spec = loaded.spec
    path = Path(run_dir) if run_dir is not None else Path(spec.run.out_dir) / spec.run.name
    if path.exists() and (not path.is_dir() or any(path.iterdir())):
        status = _status_of(path)
        raise MfmUserError(
            f"run directory {path} already exists{f' ({status})' if status else ''}; nothing was changed. "
            "Choose another name (--set run.name=...) or directory (--out DIR), or remove it"
        )
    device = resolve_device(spec.run.device)
    dtype = getattr(torch, spec.run.dtype)
    path.mkdir(parents=True, exist_ok=True)
    header = f"# resolved from {loaded.source}: every default made explicit; `mfm run` accepts this file\n"
    atomic_write_text(path / "resolved.toml", header + dump_spec(loaded.resolved))
    atomic_write_json(path / "plugins.json", plugins.to_json())
    return RunContext(spec=spec, run_dir=path, plugins=plugins, device=device, dtype=dtype)


def _status_of(path: Path) -> str:
    try:
        return "status: " + json.loads((path / "summary.json").read_text())["status"]
    except (OSError, ValueError, KeyError, TypeError):
        return "a run without summary.json: in progress or interrupted" if (path / "resolved.toml").exists() else ""


def _components_stage(ctx: RunContext) -> dict[str, Any]:
    """Instantiate every component the spec names, so a broken one fails before long work."""
    built = {}
    for path, comp in ctx.spec.components().items():
        if comp.kind.name == "backbone":
            continue  # built by the engine that knows the data shape
        comp.build()
        built[path] = comp.name
    return built


def stages_for(spec: RunSpec) -> list[tuple[str, Stage]]:
    """The stages a spec asks for, in execution order."""
    return [("components", _components_stage)]


def execute_run(ctx: RunContext) -> dict[str, Any]:
    """Run every stage of the spec; write ``summary.json``; call the lifecycle hooks.

    Returns:
        The summary (also written to ``summary.json``).
    """
    start = time.time()
    hook = ctx.plugins.hook
    torch.manual_seed(ctx.spec.run.seed)
    summary: dict[str, Any] = {"run": ctx.spec.run.name, "status": "running", "stages": ctx.summary}
    try:
        hook.mfm_run_start(run=ctx)
        for name, stage in stages_for(ctx.spec):
            ctx.summary[name] = stage(ctx)
    except BaseException as exc:
        summary.update(status="failed", error=f"{type(exc).__name__}: {exc}", elapsed_s=round(time.time() - start, 3))
        atomic_write_json(ctx.run_dir / "summary.json", summary)
        hook.mfm_run_end(run=ctx, status="failed", summary=summary)
        raise
    summary.update(status="complete", elapsed_s=round(time.time() - start, 3))
    atomic_write_json(ctx.run_dir / "summary.json", summary)
    hook.mfm_run_end(run=ctx, status="complete", summary=summary)
    return summary


def format_summary(summary: dict[str, Any]) -> str:
    """The summary as a plain-text table: one row per headline number."""
    rows: list[tuple[str, str]] = []

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, dict):
            for key, sub in value.items():
                walk(f"{prefix}.{key}" if prefix else str(key), sub)
        elif isinstance(value, float):
            rows.append((prefix, f"{value:.6g}"))
        else:
            rows.append((prefix, str(value)))

    walk("", summary.get("stages", {}))
    title = f"run {summary.get('run')}: {summary.get('status')} in {summary.get('elapsed_s', 0):.2f} s"
    if not rows:
        return title
    width = max(len(k) for k, _ in rows)
    return "\n".join([title, *(f"  {k.ljust(width)}  {v}" for k, v in rows)])
