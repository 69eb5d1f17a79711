"""What every training run shares: the run directory, metrics, atomic checkpoints, RNG state, optimizer.

A run directory holds ``config.yaml`` (resolved), ``metrics.jsonl`` (one JSON object per logged step),
``checkpoints/step-NNNNNNN/`` (complete checkpoints only: each is written under a temporary name and
renamed into place, so a kill leaves either the old set or the new one) and ``final/`` (the model and
tokenizer in HF format). ``--resume`` continues from the newest complete checkpoint.
"""

from __future__ import annotations

import json
import math
import os
import random
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from t1.config import option, require

CHECKPOINT_STATE = "trainer_state.pt"


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
        require(self.lr > 0, "lr", "must be > 0", self.lr)
        require(self.schedule in ("cosine", "constant", "linear"), "schedule",
                "must be cosine, constant or linear", self.schedule)
        require(0 <= self.warmup_ratio < 1, "warmup_ratio", "must be in [0, 1)", self.warmup_ratio)
        require(self.warmup_steps >= 0, "warmup_steps", "must be ≥ 0", self.warmup_steps)
        require(0 <= self.min_lr_ratio <= 1, "min_lr_ratio", "must be in [0, 1]", self.min_lr_ratio)
        require(self.grad_clip >= 0, "grad_clip", "must be ≥ 0", self.grad_clip)


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


# --------------------------------------------------------------------------------------------- precision


def resolve_precision(precision: str, device: torch.device) -> str:
    """"auto" -> "bf16" where the hardware has fast bf16 (CUDA with bf16 support, CPUs with AMX/AVX512-BF16),
    else "fp32"."""
    if precision != "auto":
        return precision
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    if device.type == "cpu":
        try:
            flags = Path("/proc/cpuinfo").read_text()
        except OSError:
            return "fp32"
        return "bf16" if ("amx_bf16" in flags or "avx512_bf16" in flags) else "fp32"
    return "fp32"


_ALLOCATOR_TUNED = False


def keep_freed_memory() -> bool:
    """Ask glibc's malloc to keep freed memory for reuse instead of handing it back to the kernel.

    PyTorch's CPU tensors come from malloc. By default glibc serves blocks above a (dynamic) threshold with
    fresh ``mmap`` pages and returns them on free, and trims the heap top, so every training step and every
    sampling call page-faults its activations and caches in again — measured here as the same RL update
    taking 0.6 s or 1.4 s depending on what the kernel had to zero. This serves every block from the heap
    (``M_MMAP_MAX`` = 0: even ones above the largest mmap threshold glibc allows, 32 MiB, such as a large
    batch's attention scores — measured: the demo's RL update 1.39 → 1.03 s, its reference pass 190k → 7k
    page faults) and never trims it (``mallopt`` takes a C ``int``: 2 GiB - 1, i.e. "never" for any heap top
    this tool leaves free), so a process keeps its peak like the CUDA caching allocator does.
    Process-wide, idempotent, Linux/glibc only (elsewhere a no-op); returns whether it applied."""
    global _ALLOCATOR_TUNED
    if _ALLOCATOR_TUNED:
        return True
    import ctypes
    import sys

    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        m_trim_threshold, m_mmap_max = -1, -4
        # ctypes passes Python ints as C int and silently truncates: 1 << 62 would arrive as 0 ("trim always")
        ok = (libc.mallopt(ctypes.c_int(m_mmap_max), ctypes.c_int(0)) == 1
              and libc.mallopt(ctypes.c_int(m_trim_threshold), ctypes.c_int(2**31 - 1)) == 1)
    except (OSError, AttributeError):  # not glibc (musl, …)
        return False
    _ALLOCATOR_TUNED = ok
    return ok


def quiet_libraries() -> None:
    """Our own progress bars and summaries replace transformers' per-file bars and advisory warnings."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()


def make_accelerator(precision: str):
    """An ``Accelerator`` for this run. accelerate keeps one process-wide state; its accelerator part is reset
    first so that several runs in one process (the demo: SFT then RL; the tests) can each pick a precision.
    The distributed part (process group, rank) is kept."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    quiet_libraries()
    if not torch.cuda.is_available():
        keep_freed_memory()
    AcceleratorState._reset_state()
    cpu = not torch.cuda.is_available()
    return Accelerator(mixed_precision="no" if precision == "fp32" else precision, cpu=cpu)


# ------------------------------------------------------------------------------------------------- RNG


def rng_state() -> dict:
    state = {"python": random.getstate(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# ---------------------------------------------------------------------------------------------- run dir


class Metrics:
    """Appends one JSON object per line to ``metrics.jsonl`` and flushes, so a killed run keeps its log.
    On resume, rows past the checkpoint's step are dropped first so the log has no duplicates."""

    def __init__(self, path: Path, resume_step: int | None = None):
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        if resume_step is not None and path.exists():
            keep = [line for line in path.read_text().splitlines()
                    if line.strip() and json.loads(line).get("step", 0) <= resume_step]
            path.write_text("".join(line + "\n" for line in keep))
        elif resume_step is None and path.exists():
            path.unlink()
        self.handle = open(path, "a", encoding="utf-8")

    def log(self, row: dict[str, Any]) -> None:
        self.handle.write(json.dumps(row) + "\n")
        self.handle.flush()

    def close(self) -> None:
        self.handle.close()


def checkpoint_dirs(run_dir: Path) -> list[Path]:
    """Complete checkpoints, oldest first."""
    root = run_dir / "checkpoints"
    if not root.is_dir():
        return []
    done = [p for p in root.iterdir() if p.name.startswith("step-") and (p / CHECKPOINT_STATE).exists()]
    return sorted(done, key=lambda p: int(p.name.split("-")[1]))


def save_checkpoint(run_dir: Path, step: int, write_model, state: dict, keep: int) -> Path:
    """Write a checkpoint atomically: ``write_model(dir)`` saves the model and tokenizer (HF format) and
    ``state`` (optimizer, RNG, counters) goes to ``trainer_state.pt``; keep the newest ``keep``."""
    root = run_dir / "checkpoints"
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step-{step:07d}"
    tmp = root / f".tmp-step-{step:07d}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    write_model(tmp)
    torch.save(state, tmp / CHECKPOINT_STATE)
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    for old in checkpoint_dirs(run_dir)[:-keep] if keep > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
    return final


def load_checkpoint_state(path: Path) -> dict:
    return torch.load(path / CHECKPOINT_STATE, map_location="cpu", weights_only=False)


class Timer:
    """Accumulates wall time per named phase: ``with timer("sample"): ...``."""

    def __init__(self):
        self.totals: dict[str, float] = {}

    def __call__(self, name: str):
        timer = self

        class _Span:
            def __enter__(self):
                self.start = time.perf_counter()

            def __exit__(self, *exc):
                timer.totals[name] = timer.totals.get(name, 0.0) + time.perf_counter() - self.start

        return _Span()

    def pop(self) -> dict[str, float]:
        out, self.totals = self.totals, {}
        return out
