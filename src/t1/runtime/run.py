"""What every training run shares: the run directory (:class:`RunDir`), its logs, atomic checkpoints, RNG state.

A run directory holds ``config.yaml`` (resolved), ``metrics.jsonl`` (one JSON object per logged step; RL adds
``rollouts.jsonl``), ``checkpoints/step-NNNNNNN/`` and ``final/`` (the model and tokenizer in HF format).

* One run at a time: the main process holds ``.lock`` (``flock``) for the run; a second run on the same
  directory is refused in one line, and a killed run's lock goes with its process.
* A directory that already holds a checkpoint or ``final/`` is refused unless the run resumes; ``--resume``
  continues from the newest complete checkpoint (none yet: from the start). The newest is checked first (its
  trainer state loads, its safetensors files are whole); one that is not is set aside as ``broken-step-N``
  and the previous one is used, with a warning.
* Checkpoints and ``final/`` are written under a temporary name, every file and folder fsynced, then renamed
  into place, so a kill or a power cut leaves the old set or the new one; leftovers of a killed save are
  removed when the next run starts. A failed save (a full disk, say) is one error naming the path and the
  cause, with earlier checkpoints intact; weights holding NaN/inf are never written (a diverged run).
* Logs: on resume the rows past the checkpoint's step (and a torn last line) are dropped first, so every log
  reads as if the run had never stopped.

A checkpoint is the model and tokenizer (HF format) plus ``trainer_state.pt``: the step, the trainer's own
state (optimizer; RL adds the anchor) and the RNG state, as tensors and plain data only. It is loaded with
``weights_only=True``: a state file holding pickled Python objects (which could run code) is refused.
`t1 sft` and `t1 rl` both go through :class:`RunDir`.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import pickle
import random
import re
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from t1 import config as cfglib
from t1.config import ConfigError
from t1.io import DataError, atomic_write_text, read_log
from t1.runtime.trackers import Trackers, open_trackers

CHECKPOINT_STATE = "trainer_state.pt"
LOCK = ".lock"
_STEP = re.compile(r"step-(\d+)")
_STALE = re.compile(r"\.tmp-(old-)?(step-\d+|final)-\d+")  # what a killed save leaves


class RunError(ConfigError, RuntimeError):
    """A run that cannot go on (its training diverged, its output cannot be written), in one line: the ``t1``
    command prints it like a config error (exit 2); a RuntimeError too, for callers that catch those."""


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


# ---------------------------------------------------------------------------------------------- logs


class Log:
    """One JSON Lines log of a run (``metrics.jsonl``, ``rollouts.jsonl``; every row has a ``step``): rows are
    appended and flushed, so a killed run keeps them. Resuming from a checkpoint at ``resume_step``, the rows
    past it and a torn last line (:func:`t1.io.read_log`) are dropped first, so the log has no repeats; a
    fresh start (``resume_step`` None) removes an old log."""

    def __init__(self, path: Path, resume_step: int | None = None):
        self.path, self.handle = path, None
        path.parent.mkdir(parents=True, exist_ok=True)
        if resume_step is None:
            path.unlink(missing_ok=True)
        elif path.exists():
            keep = [row for row in read_log(path) if row.get("step", 0) <= resume_step]
            atomic_write_text(path, "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in keep))

    def write(self, *rows: dict[str, Any]) -> None:
        if self.handle is None:
            self.handle = open(self.path, "a", encoding="utf-8")
        self.handle.write("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))
        self.handle.flush()

    def close(self) -> None:
        if self.handle is not None:
            self.handle.close()
            self.handle = None



# ---------------------------------------------------------------------------------------------- completions

COMPLETIONS = "completions"
_COMPLETION_FILE = re.compile(r"step_(\d+)\.parquet")


def write_completions(run_dir: Path, step: int, rows: list[dict[str, Any]]) -> Path:
    """``rows`` (prompt, response, reward, …) as ``run_dir/completions/step_NNNNN.parquet``, atomically."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    dest = run_dir / COMPLETIONS / f"step_{step:05d}.parquet"
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".tmp-{dest.name}")
    pq.write_table(pa.Table.from_pylist(rows), tmp, compression="zstd")
    os.replace(tmp, dest)
    return dest


def remove_completions(run_dir: Path, after: int) -> None:
    """Drop completion files of steps past ``after`` (a resumed run writes them again) and torn temporaries."""
    folder = run_dir / COMPLETIONS
    if not folder.is_dir():
        return
    for path in folder.iterdir():
        m = _COMPLETION_FILE.fullmatch(path.name)
        if path.name.startswith(".tmp-") or (m and int(m.group(1)) > after):
            path.unlink(missing_ok=True)


# ---------------------------------------------------------------------------------------------- the lock


class RunLock:
    """``out/.lock``, held (``flock``) while the run lives: a second run on ``out`` gets a ConfigError naming the
    holder's pid. The kernel drops the lock when its process dies, so a killed run never blocks the next."""

    def __init__(self, out: Path):
        try:
            out.mkdir(parents=True, exist_ok=True)
            self.fd: int | None = os.open(out / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise ConfigError(f"out: cannot create {out / LOCK}: {e.strerror or e}") from None
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(self.fd, 32, 0).decode(errors="replace").strip() or "unknown"
            self.release()
            raise ConfigError(f"out: {out} is in use by another run (pid {holder})") from None
        except OSError as e:  # a file system without locks (some network mounts): run, but say so
            print(f"t1: warning: {out / LOCK}: cannot lock ({e.strerror or e}); nothing stops a second run "
                  "on this directory", file=sys.stderr)
        pid = f"{os.getpid()}\n".encode()
        os.pwrite(self.fd, pid, 0)
        os.ftruncate(self.fd, len(pid))

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)  # closing the only descriptor of the open file releases the flock
            self.fd = None


# ---------------------------------------------------------------------------------------------- checkpoints


def checkpoint_dirs(run_dir: Path) -> list[Path]:
    """Checkpoints that finished saving (renamed into place, with their trainer state), oldest first."""
    root = Path(run_dir) / "checkpoints"
    if not root.is_dir():
        return []
    done = [p for p in root.iterdir() if _STEP.fullmatch(p.name) and (p / CHECKPOINT_STATE).exists()]
    return sorted(done, key=lambda p: int(p.name.split("-")[1]))


def remove_stale(run_dir: Path) -> None:
    """Remove what a killed save left (``.tmp-step-*``, ``.tmp-final-*``); call it holding the run's lock."""
    for folder in (Path(run_dir), Path(run_dir) / "checkpoints"):
        if folder.is_dir():
            for p in folder.iterdir():
                if _STALE.fullmatch(p.name):
                    shutil.rmtree(p, ignore_errors=True)


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_tree(root: Path) -> None:
    for folder, _, files in os.walk(root):
        for name in files:
            _fsync(Path(folder) / name)
        _fsync(Path(folder))


def _cause(e: BaseException, free: int | None) -> str:
    """Why a save failed, in words: a full disk is named as such (torch.save says only ``enforce fail``)."""
    if (isinstance(e, OSError) and e.errno == errno.ENOSPC) or (free is not None and free < 64 << 20):
        return "no space left on device" + (f" ({free >> 20} MiB free)" if free is not None else "")
    if isinstance(e, OSError):
        return f"{e.strerror or e}" + (f": {e.filename}" if e.filename else "")
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def write_dir(dest: Path, write: Callable[[Path], None]) -> Path:
    """Make the folder ``dest`` atomically and durably: ``write(tmp)`` fills a temporary sibling, every file and
    folder in it is fsynced, then it is renamed to ``dest`` (an old ``dest`` set aside first and removed after)
    and the parent fsynced. A failure (OSError, or torch's and safetensors' RuntimeError-like errors) removes the
    partial copy and is a :class:`RunError` naming ``dest`` and the cause; ``dest`` as it was is untouched."""
    from safetensors import SafetensorError

    parent = dest.parent
    parent.mkdir(parents=True, exist_ok=True)
    tmp = parent / f".tmp-{dest.name}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        write(tmp)
        _fsync_tree(tmp)
    except (OSError, RuntimeError, SafetensorError) as e:
        try:
            free = shutil.disk_usage(parent).free
        except OSError:
            free = None
        shutil.rmtree(tmp, ignore_errors=True)
        raise RunError(f"{dest}: could not be written: {_cause(e, free)}; nothing was replaced "
                       "(earlier checkpoints are intact)") from None
    old = parent / f".tmp-old-{dest.name}-{os.getpid()}"
    if dest.exists():
        os.replace(dest, old)
    os.replace(tmp, dest)
    _fsync(parent)
    shutil.rmtree(old, ignore_errors=True)
    return dest


def check_finite(state_dict: dict, dest: Path) -> None:
    """Refuse to write weights that hold NaN or inf: they are a diverged run, never a result."""
    for name, t in state_dict.items():
        if torch.is_tensor(t) and t.is_floating_point() and not bool(torch.isfinite(t).all()):
            raise RunError(f"{dest}: not written: the weights hold NaN or inf (first in {name}); the training "
                           "diverged — lower train.optim.lr")


def save_checkpoint(run_dir: Path, step: int, write_model, state: dict, keep: int) -> Path:
    """Write a checkpoint atomically: ``write_model(dir)`` saves the model and tokenizer (HF format) and
    ``state`` (optimizer, RNG, counters) goes to ``trainer_state.pt``; keep the newest ``keep``."""
    def write(path: Path) -> None:
        write_model(path)
        torch.save(state, path / CHECKPOINT_STATE)

    final = write_dir(Path(run_dir) / "checkpoints" / f"step-{step:07d}", write)
    for old in checkpoint_dirs(run_dir)[:-keep] if keep > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
    return final


def load_checkpoint_state(path: Path) -> dict:
    """``trainer_state.pt`` of the checkpoint ``path``, loaded with ``weights_only=True``; a file holding pickled
    Python objects is refused (:class:`t1.io.DataError`): loading it could run code."""
    file = Path(path) / CHECKPOINT_STATE
    try:
        return torch.load(file, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        if "weights only" not in str(e).lower():
            raise
        raise DataError(f"{file}: refused: it holds pickled Python objects, not only tensors and plain data "
                        "(loading it could run code); t1 never writes such a file") from None


def _safetensors_problem(path: Path) -> str | None:
    """Why the model files of checkpoint ``path`` are not whole, or None: safetensors' own header check (it
    refuses a file its header does not cover exactly, e.g. a torn or zero-length one)."""
    from safetensors import SafetensorError, safe_open

    files = sorted(path.glob("*.safetensors"))
    if not files or not (path / "config.json").exists():
        return "no model.safetensors or config.json"
    for f in files:
        try:
            with safe_open(str(f), framework="pt"):
                pass
        except (SafetensorError, OSError) as e:
            return f"{f.name}: {e}"
    return None


def check_checkpoint(path: Path) -> tuple[dict | None, str | None]:
    """(trainer state, None) for a whole checkpoint, else (None, what is wrong); cheap beside loading it."""
    problem = _safetensors_problem(path)
    if problem is not None:
        return None, problem
    try:
        return load_checkpoint_state(path), None
    except DataError:
        raise
    except Exception as e:  # a torn zip archive, an empty file, …
        text = str(e).strip()
        return None, f"{CHECKPOINT_STATE} does not load ({text.splitlines()[0] if text else type(e).__name__})"


def _newest_whole(ckpts: list[Path]) -> tuple[Path | None, dict | None, list[tuple[Path, str]]]:
    """(the newest whole checkpoint, its trainer state, [(newer broken checkpoint, why)])."""
    broken = []
    for ckpt in reversed(ckpts):
        state, problem = check_checkpoint(ckpt)
        if problem is None:
            return ckpt, state, broken
        broken.append((ckpt, problem))
    return None, None, broken


# ---------------------------------------------------------------------------------------------- run dir


class RunDir:
    """One training run's directory, for every process of the run (``acc``: an accelerate Accelerator); only
    the main process writes, and holds the lock. Made before the model is loaded: refuses a directory that
    another run is using, or that holds a run unless ``resume``, and names the checkpoint to resume from
    (``checkpoint``, None for a fresh start). Call :meth:`close` when the run ends, however it ends."""

    def __init__(self, out: str | Path, resume: bool, acc):
        self.out, self.acc, self.main = Path(out), acc, acc.is_main_process
        self.logs: dict[str, Log] = {}
        self.save_kwargs: dict[str, Any] = {}  # more arguments for the model's save_pretrained (a LoRA run's)
        self.trackers: Trackers | None = None
        self.lock = RunLock(self.out) if self.main else None
        try:
            ckpts = checkpoint_dirs(self.out)
            if not resume and (ckpts or (self.out / "final").exists()):
                raise ConfigError(f"out: {self.out} already holds a run; pass --resume to continue it or choose "
                                  "another out")
            if self.main:
                remove_stale(self.out)
            self.checkpoint, self._state, broken = _newest_whole(ckpts) if resume else (None, None, [])
            acc.wait_for_everyone()  # every process has chosen before a broken checkpoint is moved
            if self.main:
                self._set_aside(broken)
        except BaseException:
            self.close()
            raise
        acc.wait_for_everyone()

    def _set_aside(self, broken: list[tuple[Path, str]]) -> None:
        instead = f"resuming from {self.checkpoint}" if self.checkpoint else "no whole checkpoint: starting over"
        for ckpt, problem in broken:
            aside = ckpt.with_name(f"broken-{ckpt.name}")
            shutil.rmtree(aside, ignore_errors=True)
            os.replace(ckpt, aside)
            print(f"t1: warning: {ckpt}: incomplete ({problem}); set aside as {aside.name}, {instead}",
                  file=sys.stderr)

    def state(self) -> dict | None:
        """The checkpoint's trainer state (step, optimizer, RNG, …), or None on a fresh start; handed over once."""
        state, self._state = self._state, None
        return state

    def start_metrics(self, cfg: Any, start: int, note: str = "", logs: tuple[str, ...] = ("metrics",),
                      job_type: str = "") -> None:
        """Write ``config.yaml`` (``note``: comment lines above it), open the run's logs (``NAME.jsonl`` for
        each of ``logs``) at step ``start`` — rows past it dropped when resuming — and the experiment trackers
        ``cfg.report_to`` names (:mod:`t1.runtime.trackers`); main process only."""
        if self.main:
            self.out.mkdir(parents=True, exist_ok=True)
            cfglib.save(cfg, self.out / "config.yaml", note)
            resume_step = start if self.checkpoint is not None else None
            self.logs = {name: Log(self.out / f"{name}.jsonl", resume_step) for name in logs}
            remove_completions(self.out, resume_step or 0)
            if getattr(cfg, "report_to", ()):
                self.trackers = open_trackers(cfg, self.out, job_type, resume=self.checkpoint is not None)

    def log(self, *rows: dict[str, Any], to: str = "metrics") -> None:
        """Append ``rows`` to the log ``to`` (main process; others do nothing); metrics rows also go to the
        trackers as scalars at their step."""
        if to in self.logs:
            self.logs[to].write(*rows)
        if to == "metrics" and self.trackers is not None:
            for row in rows:
                self.trackers.log(row, int(row.get("step", 0)))

    def completions(self, step: int, rows: list[dict[str, Any]], shown: int) -> None:
        """A step's sampled completions: all ``rows`` to ``completions/step_NNNNN.parquet`` (atomically), the
        first ``shown`` to the trackers as the table ``completions`` (main process; others do nothing)."""
        if not self.main or not rows:
            return
        write_completions(self.out, step, rows)
        if self.trackers is not None and shown:
            self.trackers.table("completions", rows[:shown], step)

    def save_checkpoint(self, step: int, raw_model, tokenizer, gather: Callable[[], tuple[dict | None, dict]],
                        keep: int) -> None:
        """Checkpoint ``step`` atomically and keep the newest ``keep``; every process calls it. ``gather()``
        gives (the model's full state dict, the trainer's own state: optimizer, …); it runs on every process
        between barriers (under FSDP both are collectives) and only the main process's result is written,
        with the RNG state, next to ``raw_model`` (unwrapped) saved in HF format and the tokenizer."""
        self.acc.wait_for_everyone()
        state_dict, state = gather()
        if self.main:
            dest = self.out / "checkpoints" / f"step-{step:07d}"
            check_finite(state_dict if state_dict is not None else raw_model.state_dict(), dest)

            def write_model(path: Path) -> None:  # the gathered state dict keeps this FSDP/DeepSpeed safe
                raw_model.save_pretrained(path, state_dict=state_dict, **self.save_kwargs)
                tokenizer.save_pretrained(path)

            save_checkpoint(self.out, step, write_model, {"step": step, **state, "rng": rng_state()}, keep)
        self.acc.wait_for_everyone()

    def save_final(self, raw_model, tokenizer, state_dict: dict | None,
                   extra: Callable[[Path], None] | None = None) -> None:
        """The trained model (``state_dict``: its gathered full state) and tokenizer in ``final/``, atomically;
        every process calls it and returns once the files are written. ``extra(path)`` writes more into the
        folder before it is renamed into place (a LoRA run's merged model)."""
        if self.main:
            final = self.out / "final"
            check_finite(state_dict if state_dict is not None else raw_model.state_dict(), final)

            def write(path: Path) -> None:
                raw_model.save_pretrained(path, state_dict=state_dict, **self.save_kwargs)
                tokenizer.save_pretrained(path)
                if extra is not None:
                    extra(path)

            write_dir(final, write)
        self.acc.wait_for_everyone()

    def close(self) -> None:
        """Close the logs and release the lock; safe to call more than once."""
        for log in self.logs.values():
            log.close()
        if self.trackers is not None:
            self.trackers.close()
            self.trackers = None
        if self.lock is not None:
            self.lock.release()


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
