"""The training engine: generic over backbone, consistency loss, diagonal target and data source.

Single process on CPU or one GPU. Deterministic given the seed on CPU; resumable bit-identically
from its checkpoints (model, EMA, optimizer, scheduler, step and every RNG state are saved).
"""

from __future__ import annotations

import math
import sys
import time
from typing import Any

import torch
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

__all__ = ["train_stage", "sample_context_times", "make_optimizer", "lr_factor"]

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

    ema = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(cfg.ema_decay), use_buffers=True)
    optimizer = make_optimizer(model.parameters(), cfg)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(step, cfg))
    data_gen, loss_gen = ctx.generator(DATA_STREAM, device="cpu"), ctx.generator(LOSS_STREAM)

    ckpt_dir = ctx.run_dir / "checkpoints"
    ckpt_dir.mkdir(exist_ok=True)
    start = 0
    last = latest_checkpoint(ckpt_dir)
    if last is not None:
        state = load_payload(last, expected_format=CHECKPOINT_FORMAT, map_location=ctx.device)
        model.load_state_dict(state["model"])
        ema.load_state_dict(state["ema"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        data_gen.set_state(state["rng"]["data"])
        loss_gen.set_state(state["rng"]["loss"])
        torch.set_rng_state(state["rng"]["torch"])
        start = int(state["step"])
        last_loss = float(state.get("last_loss", float("nan")))
        print(f"mfm: resuming training from {last.name} (step {start})", file=sys.stderr)

    def save(step: int) -> None:
        path = checkpoint_path(ckpt_dir, step)
        save_payload(
            path,
            {
                "format": CHECKPOINT_FORMAT,
                "version": 1,
                "step": step,
                "model": model.state_dict(),
                "ema": ema.state_dict(),
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "rng": {"data": data_gen.get_state(), "loss": loss_gen.get_state(), "torch": torch.get_rng_state()},
                "last_loss": last_loss,
            },
        )
        prune_checkpoints(ckpt_dir, cfg.keep_checkpoints)
        ctx.plugins.hook.mfm_checkpoint_saved(run=ctx, path=str(path), step=step)

    batches = data.batches(batch_size=cfg.batch_size, generator=data_gen)
    progress = _Progress(cfg.steps, start, "train")
    model.train()
    began, step = time.time(), start
    if last is None:
        last_loss = float("nan")
    window: dict[str, float] = {}
    try:
        for step in range(start + 1, cfg.steps + 1):
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
            if not torch.isfinite(terms.total):
                raise FloatingPointError(f"the loss is {terms.total.item()} at step {step}; lower train.lr or raise train.grad_clip")
            optimizer.zero_grad(set_to_none=True)
            terms.total.backward()
            grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip if cfg.grad_clip > 0 else float("inf"))
            optimizer.step()
            scheduler.step()
            ema.update_parameters(model)

            last_loss = float(terms.total.detach())
            metrics = {"loss": last_loss, "grad_norm": float(grad_norm), **{k: float(v) for k, v in terms.terms.items()}}
            for key, value in metrics.items():
                window[key] = window.get(key, 0.0) + value
            ctx.plugins.hook.mfm_train_step_end(run=ctx, step=step, metrics=metrics)
            progress.update(step, last_loss)
            if step % cfg.log_every == 0 or step == cfg.steps:
                count = cfg.log_every if step % cfg.log_every == 0 else (step % cfg.log_every)
                ctx.log({"stage": "train", "step": step, "lr": scheduler.get_last_lr()[0], **{k: v / count for k, v in window.items()}})
                window = {}
            if cfg.checkpoint_every and step % cfg.checkpoint_every == 0 and step != cfg.steps:
                save(step)
    except KeyboardInterrupt:
        if step > start:
            save(step)
            print(f"\nmfm: interrupted; checkpoint saved at step {step}: continue with --resume", file=sys.stderr)
        raise
    finally:
        progress.close()
    if step > start or last is None:
        save(cfg.steps)
    ema_model: MetaFlowMap = ema.module
    save_flow_map(ctx.run_dir / "model.pt", model=ema_model, model_table=ctx.resolved["model"], step=cfg.steps)
    ctx.model = ema_model.eval().requires_grad_(False)
    elapsed = time.time() - began
    return {
        "steps": cfg.steps,
        "final_loss": last_loss,
        "parameters": sum(p.numel() for p in model.parameters()),
        "seconds": round(elapsed, 2),
    }
