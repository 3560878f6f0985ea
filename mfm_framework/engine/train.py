"""The training engine: generic over backbone, consistency loss, diagonal target and data source.

Single process on CPU or one GPU. Deterministic given the seed on CPU; resumable bit-identically
from its checkpoints (model, EMA, optimizer, scheduler, step and every RNG state are saved).

:class:`OptimizationLoop` is the machinery shared with the other training engines (fine-tuning):
optimizer, warm-up and cosine schedule, gradient clipping, EMA, ``metrics.jsonl`` records,
atomic checkpoints, resume, the progress bar, and a checkpoint on ``KeyboardInterrupt``.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from mfm_framework.checkpoint import (
    CHECKPOINT_FORMAT,
    checkpoint_path,
    latest_checkpoint,
    load_payload,
    prune_checkpoints,
    save_flow_map,
    save_payload,
)
from mfm_framework.engine.build import build_model
from mfm_framework.errors import MfmUserError
from mfm_framework.interfaces import TrainingBatch
from mfm_framework.interfaces._time import pad_time
from mfm_framework.model import MetaFlowMap

__all__ = ["train_stage", "sample_context_times", "make_optimizer", "lr_factor", "OptimizationLoop"]

# Offsets of the run seed for the independent random streams of training.
DATA_STREAM, LOSS_STREAM, INIT_STREAM = 1, 2, 3


def sample_context_times(n: int, *, q0: float, gamma: float, generator: torch.Generator, like: torch.Tensor) -> torch.Tensor:
    """Context times: exactly 0 with probability ``q0``, else ``U^gamma`` (MATH.md section 4). ``[n]``."""
    u = torch.rand(n, generator=generator, device=like.device, dtype=like.dtype)
    zero = torch.rand(n, generator=generator, device=like.device, dtype=like.dtype) < q0
    return torch.where(zero, torch.zeros_like(u), u.pow(gamma))


def make_optimizer(params: Any, cfg: Any) -> torch.optim.Optimizer:
    """AdamW or RAdam (decoupled weight decay) from a ``[train]`` section."""
    betas = (cfg.beta1, cfg.beta2)
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=cfg.lr, betas=betas, weight_decay=cfg.weight_decay)
    return torch.optim.RAdam(params, lr=cfg.lr, betas=betas, weight_decay=cfg.weight_decay, decoupled_weight_decay=True)


def lr_factor(step: int, cfg: Any) -> float:
    """Learning-rate multiplier at ``step``: linear warm-up, then constant or cosine to 0."""
    if cfg.warmup_steps and step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    if cfg.schedule == "constant":
        return 1.0
    span = max(1, cfg.steps - cfg.warmup_steps)
    return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - cfg.warmup_steps) / span)))


class _Progress:
    """tqdm on a terminal; a few plain lines otherwise (logs, CI)."""

    def __init__(self, total: int, initial: int, desc: str) -> None:
        from tqdm.auto import tqdm

        self.bar = tqdm(total=total, initial=initial, desc=desc, dynamic_ncols=True, disable=None, leave=False)
        self.plain = self.bar.disable
        self.total, self.every, self.desc = total, max(1, total // 10), desc

    def update(self, step: int, loss: float) -> None:
        if self.plain:
            if step % self.every == 0 or step == self.total:
                print(f"mfm: {self.desc} step {step}/{self.total} loss {loss:.4g}", file=sys.stderr)
        else:
            self.bar.update(1)
            self.bar.set_postfix(loss=f"{loss:.4g}", refresh=False)

    def close(self) -> None:
        self.bar.close()


StepFn = Callable[[int], "tuple[Tensor, dict[str, float]]"]
"""One optimisation step's loss: takes the step number (from 1), returns the scalar loss to
back-propagate and the extra scalars to log with it."""


class OptimizationLoop:
    """The optimisation machinery shared by the training engines (train, fine-tune).

    Owns the optimizer (:func:`make_optimizer`), the warm-up/cosine schedule (:func:`lr_factor`),
    gradient clipping, the EMA of the weights (``torch.optim.swa_utils.AveragedModel``), the
    checkpoints (atomic, pruned, resumable bit-identically on CPU: model, EMA, optimizer,
    scheduler, step, the named generators and torch's global RNG, plus an engine's ``extra``
    state), ``metrics.jsonl`` records every ``log_every`` steps (window means), the progress bar,
    the ``mfm_train_step_end`` and ``mfm_checkpoint_saved`` hooks, and a checkpoint when
    interrupted (``KeyboardInterrupt``). It does not know what the loss is.

    Args:
        ctx: the run context (``log``, ``plugins``).
        model: the trained module (its parameters get the optimizer).
        cfg: a section with ``steps``, ``optimizer``, ``lr``, ``beta1``, ``beta2``,
            ``weight_decay``, ``warmup_steps``, ``schedule``, ``grad_clip``, ``ema_decay``,
            ``log_every``, ``checkpoint_every`` and ``keep_checkpoints``.
        directory: the checkpoint folder (created).
        generators: the engine's random streams by name, saved and restored with checkpoints.
        desc: the progress bar's label.
        record: fields of every ``metrics.jsonl`` record (e.g. ``{"stage": "train"}``).
        section: the spec section named in error messages (e.g. ``"train"``).

    Attributes:
        ema: the EMA of ``model`` (``ema.module`` is the averaged model).
        start: the step of the checkpoint resumed from (0 for a fresh start).
        last_loss: the loss of the last step taken.
    """

    def __init__(
        self,
        ctx: Any,
        *,
        model: torch.nn.Module,
        cfg: Any,
        directory: Path,
        generators: dict[str, torch.Generator],
        desc: str,
        record: dict[str, Any],
        section: str,
    ) -> None:
        self.ctx, self.model, self.cfg = ctx, model, cfg
        self.directory, self.generators = Path(directory), generators
        self.desc, self.record, self.section = desc, record, section
        self.ema = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(cfg.ema_decay), use_buffers=True)
        self.optimizer = make_optimizer(model.parameters(), cfg)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lambda step: lr_factor(step, cfg))
        self.directory.mkdir(parents=True, exist_ok=True)
        self.start = 0
        self.last_loss = float("nan")
        self.resumed_from: Path | None = None
        self.extra_state: Callable[[], Any] | None = None

    def resume(self) -> Any:
        """Load the latest checkpoint of the folder, when there is one; returns its ``extra`` state
        (None for a fresh start or none saved)."""
        last = latest_checkpoint(self.directory)
        if last is None:
            return None
        state = load_payload(last, expected_format=CHECKPOINT_FORMAT, map_location=next(self.model.parameters()).device)
        self.model.load_state_dict(state["model"])
        self.ema.load_state_dict(state["ema"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        for name, gen in self.generators.items():
            gen.set_state(state["rng"][name])
        torch.set_rng_state(state["rng"]["torch"])
        self.start = int(state["step"])
        self.last_loss = float(state.get("last_loss", float("nan")))
        self.resumed_from = last
        print(f"mfm: resuming {self.desc} from {last.name} (step {self.start})", file=sys.stderr)
        return state.get("extra")

    def save(self, step: int) -> None:
        """Write the checkpoint of ``step`` atomically and prune old ones."""
        path = checkpoint_path(self.directory, step)
        payload = {
            "format": CHECKPOINT_FORMAT,
            "version": 1,
            "step": step,
            "model": self.model.state_dict(),
            "ema": self.ema.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "rng": {**{name: gen.get_state() for name, gen in self.generators.items()}, "torch": torch.get_rng_state()},
            "last_loss": self.last_loss,
        }
        if self.extra_state is not None:
            payload["extra"] = self.extra_state()
        save_payload(path, payload)
        prune_checkpoints(self.directory, self.cfg.keep_checkpoints)
        self.ctx.plugins.hook.mfm_checkpoint_saved(run=self.ctx, path=str(path), step=step)

    def run(self, step_fn: StepFn, *, after_step: Callable[[int], None] | None = None) -> float:
        """Steps ``start + 1 .. cfg.steps``: loss, backward, clipping, optimizer, schedule, EMA,
        records; ``after_step(step)`` (e.g. a periodic evaluation) before that step's checkpoint.
        Saves the last checkpoint; on ``KeyboardInterrupt``, a checkpoint of the last step taken.

        Returns:
            the elapsed seconds.
        """
        cfg, ctx = self.cfg, self.ctx
        model = self.model
        progress = _Progress(cfg.steps, self.start, self.desc)
        model.train()
        began, step = time.time(), self.start
        window: dict[str, float] = {}
        try:
            for step in range(self.start + 1, cfg.steps + 1):
                loss, extra = step_fn(step)
                if not torch.isfinite(loss):
                    raise FloatingPointError(
                        f"the loss is {loss.item()} at step {step}; lower {self.section}.lr or raise {self.section}.grad_clip"
                    )
                self.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip if cfg.grad_clip > 0 else float("inf"))
                self.optimizer.step()
                self.scheduler.step()
                self.ema.update_parameters(model)

                self.last_loss = float(loss.detach())
                metrics = {"loss": self.last_loss, "grad_norm": float(grad_norm), **extra}
                for key, value in metrics.items():
                    window[key] = window.get(key, 0.0) + value
                ctx.plugins.hook.mfm_train_step_end(run=ctx, step=step, metrics=metrics)
                progress.update(step, self.last_loss)
                if step % cfg.log_every == 0 or step == cfg.steps:
                    count = cfg.log_every if step % cfg.log_every == 0 else (step % cfg.log_every)
                    ctx.log({**self.record, "step": step, "lr": self.scheduler.get_last_lr()[0], **{k: v / count for k, v in window.items()}})
                    window = {}
                if after_step is not None:
                    after_step(step)
                if cfg.checkpoint_every and step % cfg.checkpoint_every == 0 and step != cfg.steps:
                    self.save(step)
        except KeyboardInterrupt:
            if step > self.start:
                self.save(step)
                print(f"\nmfm: interrupted; checkpoint saved at step {step}: continue with --resume", file=sys.stderr)
            raise
        finally:
            progress.close()
        if step > self.start or self.resumed_from is None:
            self.save(cfg.steps)
        return time.time() - began


def train_stage(ctx: Any) -> dict[str, Any]:
    """Train the spec's meta flow map; write ``model.pt`` (EMA weights); return headline numbers.

    Resumes from the latest checkpoint in ``checkpoints/`` when there is one.
    """
    spec, cfg = ctx.spec, ctx.spec.train
    data = ctx.data
    torch.manual_seed(spec.run.seed + INIT_STREAM)
    model = build_model(spec.model, data_shape=data.data_shape, num_classes=data.num_classes).to(ctx.device, ctx.dtype)
    loss_fn = cfg.loss.build()
    target = cfg.target.build()
    target.prepare(model=model, data=data, device=ctx.device)
    if loss_fn.requires_jvp and not model.backbone.supports_jvp:
        raise MfmUserError(f"backbone {spec.model.backbone.name!r} does not support JVPs, which loss {cfg.loss.name!r} needs")

    data_gen, loss_gen = ctx.generator(DATA_STREAM, device="cpu"), ctx.generator(LOSS_STREAM)
    loop = OptimizationLoop(
        ctx, model=model, cfg=cfg, directory=ctx.run_dir / "checkpoints", generators={"data": data_gen, "loss": loss_gen},
        desc="train", record={"stage": "train"}, section="train",
    )
    loop.resume()
    batches = data.batches(batch_size=cfg.batch_size, generator=data_gen)

    def step_fn(step: int) -> tuple[Tensor, dict[str, float]]:
        batch = next(batches)
        x_1 = batch.x_1.to(ctx.device, ctx.dtype)
        cond = batch.cond.to(ctx.device) if batch.cond is not None else None
        t = sample_context_times(x_1.shape[0], q0=cfg.q0, gamma=cfg.gamma, generator=loss_gen, like=x_1)
        z = torch.randn(x_1.shape, generator=loss_gen, device=x_1.device, dtype=x_1.dtype)
        # At t = 0 the context carries no information; it is set to 0, the point at which
        # the unconditional slice v(.; 0, 0) is evaluated after training.
        x = torch.where(pad_time(t, x_1) == 0, torch.zeros_like(x_1), model.interpolant.interpolate(x_0=z, x_1=x_1, t=t))
        terms = loss_fn(
            model,
            TrainingBatch(x_1=x_1, t=t, x=x, cond=cond, target=target, generator=loss_gen, progress=(step - 1) / cfg.steps),
        )
        return terms.total, {k: float(v) for k, v in terms.terms.items()}

    elapsed = loop.run(step_fn)
    ema_model: MetaFlowMap = loop.ema.module
    save_flow_map(ctx.run_dir / "model.pt", model=ema_model, model_table=ctx.resolved["model"], step=cfg.steps)
    ctx.model = ema_model.eval().requires_grad_(False)
    return {
        "steps": cfg.steps,
        "final_loss": loop.last_loss,
        "parameters": sum(p.numel() for p in model.parameters()),
        "seconds": round(elapsed, 2),
    }
