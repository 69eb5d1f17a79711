"""What every training run shares: the run directory, metrics, atomic checkpoints, RNG state, optimizer.

A run directory holds ``config.yaml`` (resolved), ``metrics.jsonl`` (one JSON object per logged step),
``checkpoints/step-NNNNNNN/`` (complete checkpoints only: each is written under a temporary name and
renamed into place, so a kill leaves either the old set or the new one) and ``final/`` (the model and
tokenizer in HF format). ``--resume`` continues from the newest complete checkpoint.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import time
from pathlib import Path
from typing import Any

import torch

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
