"""The optimizer (AdamW without decay on biases and norms), the learning-rate schedule, and the optimizer step
both trainers take: clip the gradient, then step unless the loss or the gradient is not finite."""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass

import torch

from t1.config import option, require
from t1.runtime.run import RunError


@dataclass(frozen=True)
class OptimConfig:
    lr: float = option(1e-5, "peak learning rate")
    schedule: str = option("cosine", "learning-rate schedule after warm-up: cosine | constant | linear")
    warmup_steps: int = option(0, "linear warm-up steps (added to warmup_ratio × total)")
    warmup_ratio: float = option(0.03, "warm-up as a fraction of all optimizer steps")
    min_lr_ratio: float = option(0.0, "final learning rate as a fraction of the peak (cosine / linear)")
    weight_decay: float = option(0.1, "AdamW weight decay (not applied to biases and norms)")
    beta1: float = option(0.9, "AdamW beta1")
    beta2: float = option(0.95, "AdamW beta2")
    eps: float = option(1e-8, "AdamW epsilon")
    grad_clip: float = option(1.0, "clip the global gradient norm to this (0 = off)")

    def validate(self) -> None:
        require(0 < self.lr <= 1, "lr", "must be in (0, 1]", self.lr)
        require(self.schedule in ("cosine", "constant", "linear"), "schedule",
                "must be cosine, constant or linear", self.schedule)
        require(0 <= self.warmup_ratio < 1, "warmup_ratio", "must be in [0, 1)", self.warmup_ratio)
        require(self.warmup_steps >= 0, "warmup_steps", "must be ≥ 0", self.warmup_steps)
        require(0 <= self.min_lr_ratio <= 1, "min_lr_ratio", "must be in [0, 1]", self.min_lr_ratio)
        require(self.grad_clip >= 0, "grad_clip", "must be ≥ 0", self.grad_clip)
        require(self.weight_decay >= 0, "weight_decay", "must be ≥ 0", self.weight_decay)
        require(0 <= self.beta1 < 1, "beta1", "must be in [0, 1)", self.beta1)
        require(0 <= self.beta2 < 1, "beta2", "must be in [0, 1)", self.beta2)
        require(self.eps > 0, "eps", "must be > 0", self.eps)


def make_optimizer(model: torch.nn.Module, cfg: OptimConfig) -> torch.optim.Optimizer:
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (no_decay if p.ndim < 2 else decay).append(p)
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), eps=cfg.eps)


def lr_factor(step: int, total: int, cfg: OptimConfig) -> float:
    """Multiplier of the peak lr at optimizer step ``step`` (0-based) of ``total``."""
    warmup = cfg.warmup_steps + int(cfg.warmup_ratio * total)
    if step < warmup:
        return (step + 1) / warmup
    if cfg.schedule == "constant":
        return 1.0
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    shape = 0.5 * (1 + math.cos(math.pi * progress)) if cfg.schedule == "cosine" else 1 - progress
    return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * shape


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr


def clip_and_step(acc, model: torch.nn.Module, optimizer: torch.optim.Optimizer, grad_clip: float,
                  loss_sum: float) -> tuple[float, bool]:
    """Clip the global gradient norm to ``grad_clip`` (0 = off), then step unless the loss or the gradient
    is not finite; gradients are cleared either way. Returns (grad norm before clipping, skipped)."""
    grad_norm = float(acc.clip_grad_norm_(model.parameters(), grad_clip if grad_clip > 0 else float("inf")))
    skipped = not math.isfinite(grad_norm) or not math.isfinite(loss_sum)
    if not skipped:
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return grad_norm, skipped


class BadSteps:
    """Counts consecutive skipped steps (a NaN/inf loss or gradient): a warning for each, and an error once
    ``limit`` come in a row. ``stage``: the command that prefixes the messages (sft, rl)."""

    def __init__(self, stage: str, limit: int):
        self.stage, self.limit, self.streak = stage, limit, 0

    def check(self, step: int, skipped: bool) -> None:
        """After 0-based ``step``: raise :class:`t1.runtime.run.RunError` (one line at the command) at the
        ``limit``-th skipped step in a row."""
        self.streak = self.streak + 1 if skipped else 0
        if not skipped:
            return
        print(f"{self.stage}: warning: step {step + 1}: non-finite loss or gradient; update skipped",
              file=sys.stderr)
        if self.streak >= self.limit:
            raise RunError(f"{self.stage}: {self.streak} consecutive steps with a non-finite loss or gradient "
                           f"(last at step {step + 1}); lower train.optim.lr or check the data")
