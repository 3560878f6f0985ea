"""Runs: the run directory, its context, and the execution of a validated spec.

A run directory holds ``resolved.toml`` and ``plugins.json`` (written before any work),
``metrics.jsonl`` (one JSON object per logged step or result) and, when the run ends,
``summary.json`` with ``"status": "complete"`` or ``"failed"``. A directory without
``summary.json`` is a run in progress or one that was killed.
"""

from __future__ import annotations

import json
import sys
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
        resolved: the resolved spec as raw TOML data (what ``resolved.toml`` holds).
        run_dir: the run directory.
        plugins: the plugin system (lifecycle hooks: ``plugins.hook.mfm_...``).
        device: where tensors live.
        dtype: the floating-point dtype of models and data.
        summary: headline numbers by stage; written to ``summary.json`` at the end.
        tables: formatted tables by stage, printed at the end of the run instead of raw numbers.
        data: the data source, when the spec has one.
        model: the meta flow map (set by training, or loaded for evaluation).
    """

    spec: RunSpec
    resolved: dict[str, Any]
    run_dir: Path
    plugins: PluginSystem
    device: torch.device
    dtype: torch.dtype
    summary: dict[str, Any] = attrs.field(factory=dict)
    tables: dict[str, str] = attrs.field(factory=dict)
    data: Any = None
    model: Any = None

    @property
    def metrics_path(self) -> Path:
        return self.run_dir / "metrics.jsonl"

    def log(self, record: dict[str, Any]) -> None:
        """Append one record (with a wall-clock ``time``) to ``metrics.jsonl``."""
        append_jsonl(self.metrics_path, {"time": round(time.time(), 3), **record})

    def generator(self, offset: int = 0, *, device: torch.device | str | None = None) -> torch.Generator:
        """A generator seeded with ``run.seed + offset`` (on the run's device unless given)."""
        gen = torch.Generator(device=self.device if device is None else device)
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


def prepare_run(
    loaded: LoadedSpec, *, plugins: PluginSystem, run_dir: str | Path | None = None, resume: bool = False
) -> RunContext:
    """Create the run directory and write ``resolved.toml`` and ``plugins.json`` before any work.

    With ``resume``, the directory must hold a run of the same resolved spec; its files are kept
    and the stages continue from their checkpoints.

    Raises:
        MfmUserError: the run directory already holds something (or, resuming, holds nothing or a
            different spec), or the device is unavailable. Nothing is written in that case.
    """
    spec = loaded.spec
    path = Path(run_dir) if run_dir is not None else Path(spec.run.out_dir) / spec.run.name
    if resume:
        _check_resumable(path, loaded)
    elif path.exists() and (not path.is_dir() or any(path.iterdir())):
        status = _status_of(path)
        raise MfmUserError(
            f"run directory {path} already exists{f' ({status})' if status else ''}; nothing was changed. "
            "Continue it with --resume, or choose another name (--set run.name=...) or directory (--out DIR)"
        )
    device = resolve_device(spec.run.device)
    dtype = getattr(torch, spec.run.dtype)
    path.mkdir(parents=True, exist_ok=True)
    if not resume:
        header = f"# resolved from {loaded.source}: every default made explicit; `mfm run` accepts this file\n"
        atomic_write_text(path / "resolved.toml", header + dump_spec(loaded.resolved))
    atomic_write_json(path / "plugins.json", plugins.to_json())
    ctx = RunContext(spec=spec, resolved=loaded.resolved, run_dir=path, plugins=plugins, device=device, dtype=dtype)
    if spec.data is not None:
        ctx.data = spec.data.build()
    return ctx


def _check_resumable(path: Path, loaded: LoadedSpec) -> None:
    from mfm_framework.spec import read_toml

    stored_path = path / "resolved.toml"
    if not stored_path.is_file():
        raise MfmUserError(f"nothing to resume: {stored_path} does not exist (run without --resume to start)")
    stored = read_toml(stored_path)
    if stored != loaded.resolved:
        diffs = _differences(stored, loaded.resolved)
        raise MfmUserError(
            f"cannot resume {path}: the spec differs from its resolved.toml at "
            + ", ".join(diffs[:8])
            + ("..." if len(diffs) > 8 else "")
            + "; resume with the same spec (or run the stored one: mfm run "
            + f"{stored_path} --resume --out {path})"
        )


def _differences(a: Any, b: Any, prefix: str = "$") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        out: list[str] = []
        for key in sorted(set(a) | set(b)):
            out += _differences(a.get(key), b.get(key), f"{prefix}.{key}")
        return out
    return [] if a == b else [prefix]


def _read_summary(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads((path / "summary.json").read_text())
    except (OSError, ValueError):
        return None


def _status_of(path: Path) -> str:
    try:
        return "status: " + json.loads((path / "summary.json").read_text())["status"]
    except (OSError, ValueError, KeyError, TypeError):
        return "a run without summary.json: in progress or interrupted" if (path / "resolved.toml").exists() else ""


def _components_stage(ctx: RunContext) -> dict[str, Any]:
    """Instantiate every component the spec names, so a broken one fails before long work."""
    built = {}
    for path, comp in ctx.spec.components().items():
        if comp.kind.name != "backbone":  # built by the engine that knows the data shape
            comp.build()
        built[path] = comp.name
    return built


def _train_stage(ctx: RunContext) -> dict[str, Any]:
    from mfm_framework.engine.train import train_stage

    return train_stage(ctx)


def _evaluate_stage(ctx: RunContext) -> dict[str, Any]:
    from mfm_framework.engine.evaluate import evaluate_stage

    return evaluate_stage(ctx)


def _steer_stage(ctx: RunContext) -> dict[str, Any]:
    from mfm_framework.engine.steer import steer_stage

    return steer_stage(ctx)


def _finetune_stage(ctx: RunContext) -> dict[str, Any]:
    from mfm_framework.engine.finetune import finetune_stage

    return finetune_stage(ctx)


def _skipped_train_stage(ctx: RunContext) -> dict[str, Any]:
    given = ", ".join(f"{name}.model is given ({getattr(ctx.spec, name).model})" for name in ("steer", "finetune")
                      if getattr(ctx.spec, name) is not None and getattr(ctx.spec, name).model is not None)
    print(f"mfm: [train] skipped: {given}", file=sys.stderr)
    return {"skipped": f"{given} and no other stage needs the trained model"}


def trains(spec: RunSpec) -> bool:
    """Whether ``[train]`` runs: it is skipped when ``[steer]`` names its own model file and no
    other stage needs the trained model (so one spec both trains-then-steers and, with
    ``--set steer.model=...``, steers an existing model)."""
    if spec.train is None:
        return False
    # [finetune] is a consumer like [steer]: train unless every stage that takes a model has its own
    if spec.finetune is not None:
        if spec.finetune.model is None:
            return True
        if spec.steer is None:
            return spec.evaluate is not None and spec.evaluate.model is None
    if spec.steer is None or spec.steer.model is None:
        return True
    return spec.evaluate is not None and spec.evaluate.model is None


def stages_for(spec: RunSpec) -> list[tuple[str, Stage]]:
    """The stages a spec asks for, in execution order."""
    stages: list[tuple[str, Stage]] = [("components", _components_stage)]
    if spec.train is not None:
        stages.append(("train", _train_stage if trains(spec) else _skipped_train_stage))
    if spec.evaluate is not None:
        stages.append(("evaluate", _evaluate_stage))
    if spec.steer is not None:
        stages.append(("steer", _steer_stage))
    if spec.finetune is not None:
        stages.append(("finetune", _finetune_stage))
    return stages


def execute_run(ctx: RunContext) -> dict[str, Any]:
    """Run every stage of the spec; write ``summary.json``; call the lifecycle hooks.

    Returns:
        The summary (also written to ``summary.json``).
    """
    previous = _read_summary(ctx.run_dir)
    if previous is not None and previous.get("status") == "complete":
        print(f"mfm: {ctx.run_dir} is already complete; nothing to do", file=sys.stderr)
        return previous
    start = time.time()
    hook = ctx.plugins.hook
    torch.manual_seed(ctx.spec.run.seed)
    if ctx.spec.run.threads:
        torch.set_num_threads(ctx.spec.run.threads)
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


def format_summary(summary: dict[str, Any], tables: dict[str, str] | None = None) -> str:
    """The summary as plain text: a stage's own table where it made one, else one row per number."""
    tables = tables or {}
    rows: list[tuple[str, str]] = []

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, dict):
            for key, sub in value.items():
                walk(f"{prefix}.{key}" if prefix else str(key), sub)
        elif isinstance(value, float):
            rows.append((prefix, f"{value:.6g}"))
        else:
            rows.append((prefix, str(value)))

    for stage, value in summary.get("stages", {}).items():
        if stage not in tables:
            walk(stage, value)
    title = f"run {summary.get('run')}: {summary.get('status')} in {summary.get('elapsed_s', 0):.2f} s"
    width = max((len(k) for k, _ in rows), default=0)
    lines = [title, *(f"  {k.ljust(width)}  {v}" for k, v in rows)]
    return "\n\n".join(["\n".join(lines), *tables.values()])
