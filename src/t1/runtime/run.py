"""What every training run shares: the run directory (:class:`RunDir`), metrics, atomic checkpoints, RNG state.

A run directory holds ``config.yaml`` (resolved), ``metrics.jsonl`` (one JSON object per logged step),
``checkpoints/step-NNNNNNN/`` (complete checkpoints only: each is written under a temporary name and
renamed into place, so a kill leaves either the old set or the new one) and ``final/`` (the model and
tokenizer in HF format). A directory that already holds a checkpoint or ``final/`` is refused unless the
run resumes; ``--resume`` continues from the newest complete checkpoint (none yet: from the start).
A checkpoint is the model and tokenizer (HF format) plus ``trainer_state.pt``: the step, the trainer's own
state (optimizer; RL adds the anchor) and the RNG state. `t1 sft` and `t1 rl` both go through :class:`RunDir`.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from t1 import config as cfglib
from t1.config import ConfigError

CHECKPOINT_STATE = "trainer_state.pt"


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


class RunDir:
    """One training run's directory, for every process of the run (``acc``: an accelerate Accelerator); only
    the main process writes. Made before the model is loaded: refuses a directory that holds a run unless
    ``resume``, and names the checkpoint to resume from (``checkpoint``, None for a fresh start)."""

    def __init__(self, out: str | Path, resume: bool, acc):
        self.out, self.acc, self.main = Path(out), acc, acc.is_main_process
        ckpts = checkpoint_dirs(self.out)
        if not resume and (ckpts or (self.out / "final").exists()):
            raise ConfigError(f"out: {self.out} already holds a run; pass --resume to continue it or choose "
                              "another out")
        self.checkpoint: Path | None = ckpts[-1] if (resume and ckpts) else None
        self.metrics: Metrics | None = None
        acc.wait_for_everyone()

    def state(self) -> dict | None:
        """The checkpoint's trainer state (step, optimizer, RNG, …), or None on a fresh start."""
        return load_checkpoint_state(self.checkpoint) if self.checkpoint is not None else None

    def start_metrics(self, cfg: Any, start: int, note: str = "") -> None:
        """Write ``config.yaml`` (``note``: comment lines above it) and open ``metrics.jsonl`` at step
        ``start`` (rows past it dropped when resuming); main process only."""
        if self.main:
            self.out.mkdir(parents=True, exist_ok=True)
            cfglib.save(cfg, self.out / "config.yaml", note)
            self.metrics = Metrics(self.out / "metrics.jsonl", start if self.checkpoint is not None else None)

    def log(self, row: dict[str, Any]) -> None:
        if self.metrics is not None:
            self.metrics.log(row)

    def save_checkpoint(self, step: int, raw_model, tokenizer, gather: Callable[[], tuple[dict | None, dict]],
                        keep: int) -> None:
        """Checkpoint ``step`` atomically and keep the newest ``keep``; every process calls it. ``gather()``
        gives (the model's full state dict, the trainer's own state: optimizer, …); it runs on every process
        between barriers (under FSDP both are collectives) and only the main process's result is written,
        with the RNG state, next to ``raw_model`` (unwrapped) saved in HF format and the tokenizer."""
        self.acc.wait_for_everyone()
        state_dict, state = gather()
        if self.main:
            def write_model(path: Path) -> None:  # the gathered state dict keeps this FSDP/DeepSpeed safe
                raw_model.save_pretrained(path, state_dict=state_dict)
                tokenizer.save_pretrained(path)

            save_checkpoint(self.out, step, write_model, {"step": step, **state, "rng": rng_state()}, keep)
        self.acc.wait_for_everyone()

    def save_final(self, raw_model, tokenizer, state_dict: dict | None) -> None:
        """The trained model (``state_dict``: its gathered full state) and tokenizer in ``final/``; every
        process calls it and returns once the files are written."""
        if self.main:
            final = self.out / "final"
            raw_model.save_pretrained(final, state_dict=state_dict)
            tokenizer.save_pretrained(final)
        self.acc.wait_for_everyone()

    def close(self) -> None:
        if self.metrics is not None:
            self.metrics.close()


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
