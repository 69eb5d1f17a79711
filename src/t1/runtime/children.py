"""Child processes that run `t1` commands: started so that they never outlive this process, stopped together.

Why children at all: a stage run in-process leaves its memory behind (measured: 250–400 MB of RSS per demo-sized
RL run that no ``gc.collect()`` or allocator setting returns), so a long `t1 sweep` would grow until the kernel
kills it; and a small model does not use two CPU cores well, so two single-threaded runs at once finish more
work per minute than one two-threaded run (the demo's two SFT runs, ``t1 sweep --jobs 2``).

* :func:`die_with_parent` — a ``preexec_fn``: the kernel sends the child SIGKILL when this process dies, however
  it dies (Linux ``PR_SET_PDEATHSIG``).
* :func:`stop` — terminate still-running children, wait, kill those that do not stop in 30 s.
* :func:`run_jobs` — each job is a list of commands run in turn; up to ``parallel`` jobs at once, each with
  ``threads`` CPU threads (``OMP_NUM_THREADS``); its output to its log file (or this process's stderr). The
  first job that fails stops the others and raises one :class:`~t1.runtime.checkpoint.RunError` with its last
  line and its log.
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from t1.runtime.checkpoint import RunError


def die_with_parent():
    """A ``preexec_fn`` after which the child gets SIGKILL from the kernel when this process dies, however it
    dies (Linux ``PR_SET_PDEATHSIG``); None elsewhere."""
    if not sys.platform.startswith("linux"):
        return None
    prctl = ctypes.CDLL(None, use_errno=True).prctl  # looked up before the fork: the child only calls it
    parent = os.getpid()

    def preexec() -> None:
        prctl(1, int(signal.SIGKILL))  # 1 = PR_SET_PDEATHSIG
        if os.getppid() != parent:  # the parent died before prctl took effect
            os._exit(1)

    return preexec


def stop(procs: list[subprocess.Popen]) -> list[subprocess.Popen]:
    """Terminate the children still running (SIGKILL after 30 s); the ones that were stopped."""
    stopped = [p for p in procs if p.poll() is None]
    for p in stopped:
        p.terminate()
    for p in stopped:
        try:
            p.wait(timeout=30)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
    return stopped


def usable_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def thread_env(threads: int | None) -> dict[str, str]:
    """This process's environment, with ``threads`` CPU threads per child if given."""
    env = dict(os.environ)
    if threads is not None:
        env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    return env


def t1_command(*args: str | Path) -> list[str]:
    """``python -m t1 ARGS…`` with this interpreter."""
    return [sys.executable, "-m", "t1", *map(str, args)]


@dataclass
class Job:
    name: str  # how errors and progress lines name it
    commands: list[list[str]]  # run in turn; the job fails at the first that exits non-zero
    log: Path | None  # its output (appended); None: this process's stderr
    started: Callable[[], None] | None = None  # called when its first command starts
    done: Callable[[], None] | None = None  # called once every command succeeded


@dataclass
class _Live:
    job: Job
    proc: subprocess.Popen
    left: list[list[str]]
    env: dict[str, str]
    device: str | None


def _start(job: Job, command: list[str], env: dict[str, str]) -> subprocess.Popen:
    if job.log is None:
        return subprocess.Popen(command, env=env, preexec_fn=die_with_parent())
    job.log.parent.mkdir(parents=True, exist_ok=True)
    with open(job.log, "a") as log:
        log.write(f"$ {' '.join(command)}\n")
        log.flush()
        return subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT,
                                preexec_fn=die_with_parent())


def _how(code: int) -> str:
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        return f"killed by {name}" + (" — out of memory?" if name == "SIGKILL" else "")
    return f"exit {code}"


def _failure(job: Job, code: int) -> RunError:
    if job.log is None:
        return RunError(f"{job.name} failed ({_how(code)})" + ("; its error is above" if code > 0 else ""))
    lines = [s.strip() for s in job.log.read_text(errors="replace").splitlines() if s.strip()] or [""]
    last = lines[-1] if code > 0 and lines[-1] else _how(code)
    return RunError(f"{job.name} failed ({last}); see {job.log}")


def run_jobs(jobs: list[Job], parallel: int = 1, threads: int | None = None, poll_s: float = 0.5,
             devices: list[str] | None = None) -> None:
    """Run every job, ``parallel`` at a time, in order of the list; see the module doc. ``devices``: GPU ids;
    each running job holds one of them as its ``CUDA_VISIBLE_DEVICES`` (never two jobs on one GPU)."""
    base, waiting, live = thread_env(threads), list(jobs), []
    try:
        while waiting or live:
            while waiting and len(live) < max(1, parallel):
                job = waiting.pop(0)
                if job.started is not None:
                    job.started()
                if not job.commands:
                    continue
                held = {item.device for item in live}
                device = next((d for d in devices if d not in held), None) if devices else None
                env = base if device is None else {**base, "CUDA_VISIBLE_DEVICES": device}
                live.append(_Live(job, _start(job, job.commands[0], env), job.commands[1:], env, device))
            time.sleep(poll_s)
            for item in list(live):
                code = item.proc.poll()
                if code is None:
                    continue
                if code != 0:
                    raise _failure(item.job, code)
                if item.left:
                    item.proc, item.left = _start(item.job, item.left[0], item.env), item.left[1:]
                    continue
                live.remove(item)
                if item.job.done is not None:
                    item.job.done()
    finally:
        stop([item.proc for item in live])
