"""What every training run shares: the run directory (:class:`RunDir`), its logs, atomic checkpoints, RNG state.

A run directory holds ``config.yaml`` (resolved), ``metrics.jsonl`` (one JSON object per logged step; RL adds
``rollouts.jsonl``), ``checkpoints/step-NNNNNNN/`` and ``final/`` (the model and tokenizer in HF format).

* One run at a time: the main process holds ``.lock`` (``flock``) for the run; a second run on the same
  directory is refused in one line, and a killed run's lock goes with its process.
* A directory that already holds a checkpoint or ``final/`` is refused unless the run resumes; ``--resume``
  continues from the newest whole checkpoint (none yet: from the start). The newest is checked first (its
  model files — a full model's or a LoRA adapter's — are there with whole safetensors headers, its bytes match
  its ``checksums.json``, its trainer state loads); one that is not is set aside as ``broken-step-N`` and the
  previous one is used, with a warning. The main process checks (reading every byte once) and tells the others
  which checkpoint it chose (:mod:`t1.runtime.checkpoint`).
* Resuming from a checkpoint, the command's config is compared with the run's ``config.yaml``: a changed field
  that shapes the run (lr, seed, batch, data, K, model, LoRA, …) is refused in one line naming every such
  field, old → new; the allow-list of safe changes (output, logging, memory knobs, a longer run when the lr
  schedule allows it) and how accepted ones are recorded: :mod:`t1.runtime.resume`. Every process raises
  the main process's refusal, so a run under torchrun stops as one.
* Checkpoints and ``final/`` are written under a temporary name, every file and folder fsynced, then renamed
  into place, so a kill or a power cut leaves the old set or the new one; leftovers of a killed save are
  removed when the next run starts. A failed save (a full disk, say) is one error naming the path and the
  cause, with earlier checkpoints intact; weights holding NaN/inf are never written (a diverged run).
* Logs: on resume the rows past the checkpoint's step (and a torn last line) are dropped first, so every log
  reads as if the run had never stopped; the experiment trackers are told the step too, so they do not show
  the steps between the checkpoint and the kill twice (:mod:`t1.runtime.trackers`).

A checkpoint is the model and tokenizer (HF format; a LoRA run's: the adapter) plus ``trainer_state.pt``: the
step, the trainer's own state (optimizer; RL adds the anchor) and the RNG state, as tensors and plain data
only, and ``checksums.json``. It is loaded with ``weights_only=True``: a state file holding pickled Python
objects (which could run code) is refused. `t1 sft` and `t1 rl` both go through :class:`RunDir`.
"""

from __future__ import annotations

import fcntl
import json
import math
import os
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
from t1.runtime import resume as resumelib
from t1.runtime.checkpoint import (  # noqa: F401  (re-exported: the run directory's one import)
    CHECKPOINT_STATE,
    CHECKSUMS,
    RunError,
    check_checkpoint,
    check_finite,
    checkpoint_dirs,
    load_checkpoint_state,
    newest_whole,
    remove_stale,
    save_checkpoint,
    write_dir,
)
from t1.runtime.trackers import Trackers, open_trackers

LOCK = ".lock"


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


def _finite(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def json_line(row: dict[str, Any]) -> str:
    """One log row as a line of strict JSON: NaN and ±Infinity (which Python's json writes and every other
    reader — jq, pandas' strict mode, JavaScript — refuses) become null."""
    try:
        return json.dumps(row, ensure_ascii=False, allow_nan=False) + "\n"
    except ValueError:
        return json.dumps(_finite(row), ensure_ascii=False) + "\n"


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
            atomic_write_text(path, "".join(json_line(row) for row in keep))

    def write(self, *rows: dict[str, Any]) -> None:
        if self.handle is None:
            self.handle = open(self.path, "a", encoding="utf-8")
        self.handle.write("".join(json_line(row) for row in rows))
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
            why = (f"{out} is a file, expected a run directory" if out.exists() and not out.is_dir()
                   else f"cannot create {out / LOCK}: {e.strerror or e}")
            raise ConfigError(f"out: {why}") from None
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


# ---------------------------------------------------------------------------------------------- run dir


def _from_main(acc, value: Any) -> Any:
    """``value`` as the main process has it, on every process (one broadcast; nothing with one process)."""
    if getattr(acc, "num_processes", 1) <= 1:
        return value
    from accelerate.utils import broadcast_object_list

    return broadcast_object_list([value], from_process=0)[0]


class RunDir:
    """One training run's directory, for every process of the run (``acc``: an accelerate Accelerator); only
    the main process writes, and holds the lock. Made before the model is loaded: refuses a directory that
    another run is using, or that holds a run unless ``resume``, or whose ``config.yaml`` differs from ``cfg``
    (the resolved stage config; None: not compared) in a field :mod:`t1.runtime.resume` does not allow, and
    names the checkpoint to resume from (``checkpoint``, None for a fresh start). Call :meth:`close` when the
    run ends, however it ends."""

    def __init__(self, out: str | Path, resume: bool, acc, cfg: Any = None):
        self.out, self.acc, self.main = Path(out), acc, acc.is_main_process
        self.resume = resume
        self.logs: dict[str, Log] = {}
        self.save_kwargs: dict[str, Any] = {}  # more arguments for the model's save_pretrained (a LoRA run's)
        self.trackers: Trackers | None = None
        self.checkpoint: Path | None = None
        self._state: dict | None = None
        self.accepted: list[resumelib.Change] = []  # config changes allowed on this resume (main process)
        self.lock = RunLock(self.out) if self.main else None
        try:
            ckpts = checkpoint_dirs(self.out)
            if not resume and (ckpts or (self.out / "final").exists()):
                raise ConfigError(f"out: {self.out} already holds a run; pass --resume to continue it or choose "
                                  "another out")
            if self.main:
                remove_stale(self.out)
            broken = self._choose(ckpts, cfg) if resume else []
            if self.main:
                self._set_aside(broken)
        except BaseException:
            self.close()
            raise
        acc.wait_for_everyone()

    def _choose(self, ckpts: list[Path], cfg: Any) -> list[tuple[Path, str]]:
        """Pick the checkpoint to resume from and check ``cfg`` against the run's: the main process does both
        (it reads every byte of the checkpoint once) and hands its choice, or its error, to every process, so
        they all go on from the same checkpoint or all stop with the same one line. Returns the newer broken
        checkpoints (main process), to be set aside."""
        choice: tuple[str | None, tuple[str, str] | None] = (None, None)
        broken: list[tuple[Path, str]] = []
        if self.main:
            try:
                ckpt, self._state, broken = newest_whole(ckpts)
                if ckpt is not None and cfg is not None:
                    self.accepted = resumelib.check(cfg, self.out, int(self._state["step"]))
                choice = (ckpt.name if ckpt is not None else None, None)
            except (ConfigError, DataError) as e:
                choice = (None, ("data" if isinstance(e, DataError) else "config", str(e)))
        name, error = _from_main(self.acc, choice)
        if error is not None:
            raise (DataError if error[0] == "data" else ConfigError)(error[1])
        self.checkpoint = self.out / "checkpoints" / name if name is not None else None
        if self.checkpoint is not None and not self.main:
            self._state = load_checkpoint_state(self.checkpoint)
        return broken

    def _set_aside(self, broken: list[tuple[Path, str]]) -> None:
        instead = f"resuming from {self.checkpoint}" if self.checkpoint else "no whole checkpoint: starting over"
        for ckpt, problem in broken:
            aside = ckpt.with_name(f"broken-{ckpt.name}")
            shutil.rmtree(aside, ignore_errors=True)
            os.replace(ckpt, aside)
            kind = "damaged" if CHECKSUMS in problem else "incomplete"
            print(f"t1: warning: {ckpt}: {kind} ({problem}); set aside as {aside.name}, {instead}",
                  file=sys.stderr)

    def state(self) -> dict | None:
        """The checkpoint's trainer state (step, optimizer, RNG, …), or None on a fresh start; handed over once."""
        state, self._state = self._state, None
        return state

    def start_metrics(self, cfg: Any, start: int, note: str = "", logs: tuple[str, ...] = ("metrics",),
                      job_type: str = "") -> None:
        """Write ``config.yaml`` (``note``: comment lines above it, then the config changes accepted on this
        and earlier resumes), open the run's logs (``NAME.jsonl`` for each of ``logs``) at step ``start`` —
        rows past it dropped when resuming — and the experiment trackers ``cfg.report_to`` names
        (:mod:`t1.runtime.trackers`; told the step resumed from); main process only."""
        if self.main:
            self.out.mkdir(parents=True, exist_ok=True)
            resume_step = start if self.checkpoint is not None else None
            if resume_step is not None:
                note = "\n".join(filter(None, [note, resumelib.note(self.out / "config.yaml", start,
                                                                     self.accepted)]))
            cfglib.save(cfg, self.out / "config.yaml", note)
            self.logs = {name: Log(self.out / f"{name}.jsonl", resume_step) for name in logs}
            remove_completions(self.out, resume_step or 0)
            if getattr(cfg, "report_to", ()):
                # --resume with no checkpoint yet starts over at step 0: the trackers still reopen the killed
                # run (TensorBoard purges all of its events, MLflow/Trackio/W&B skip the steps they hold)
                # instead of leaving it beside a second copy
                tracked = resume_step if resume_step is not None else (0 if self.resume else None)
                self.trackers = open_trackers(cfg, self.out, job_type, resume=tracked is not None,
                                              resume_step=tracked)

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
