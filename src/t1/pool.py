"""A process pool in which every task has a hard time limit, enforced from outside the task.

Why not ``concurrent.futures`` or math-verify's own limits: math-verify bounds its work with
``signal.alarm``, which only works in a process's main thread, and a ``ProcessPoolExecutor`` cannot stop one
runaway task without tearing the whole pool down. Here the parent watches the clock: a worker whose current
task overruns is killed, that task is reported as ``"timeout"``, its queued tasks go back to the queue, and a
fresh worker takes its place. Callers may be in any thread or process.

Workers are forked from the calling process after it has imported the modules named in ``preload``, so a
start or restart costs milliseconds, not the seconds it takes to import sympy, and no ``if __name__ ==
"__main__"`` guard is needed in the caller's script (a fork server or spawn would re-import it). The
workers run only the task function; they never touch torch or any lock the parent's threads may hold.
Each worker keeps at most ``prefetch`` tasks in flight so the pipe never idles and a kill loses little
queued work.
"""

from __future__ import annotations

import importlib
import multiprocessing as mp
import time
import warnings
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from multiprocessing.connection import wait
from typing import Any


@dataclass(frozen=True)
class Outcome:
    status: str  # "ok" | "timeout" | "error"
    value: Any = None
    error: str = ""


def _worker(conn, fn: Callable) -> None:  # pragma: no cover - runs in the child
    while True:
        try:
            msg = conn.recv()
        except EOFError:
            return
        if msg is None:
            return
        idx, args = msg
        try:
            conn.send((idx, "ok", fn(*args), ""))
        except Exception as e:  # a task's own failure is its result, the worker lives on
            conn.send((idx, "error", None, f"{type(e).__name__}: {e}"[:500]))


class _Slot:
    def __init__(self, ctx, fn):
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=_worker, args=(child, fn), daemon=True)
        with warnings.catch_warnings():  # Python ≥ 3.12 warns on fork with threads; see the module doc
            warnings.simplefilter("ignore", DeprecationWarning)
            self.proc.start()
        child.close()
        self.inflight: deque[int] = deque()
        self.started = 0.0  # when the task at the head of ``inflight`` began

    def kill(self) -> None:
        self.proc.kill()
        self.proc.join()
        self.conn.close()


class DeadlinePool:
    """``DeadlinePool(fn, workers=2, timeout=5.0).map(list_of_arg_tuples)`` -> list of :class:`Outcome`.

    ``fn`` must be importable at module level (it is sent to the workers by reference).
    """

    def __init__(self, fn: Callable, workers: int, timeout: float, preload: Sequence[str] = (),
                 prefetch: int = 4):
        if workers < 1:
            raise ValueError(f"workers must be ≥ 1 (got {workers})")
        if timeout <= 0:
            raise ValueError(f"timeout must be > 0 (got {timeout})")
        self.fn, self.workers, self.timeout, self.prefetch = fn, workers, timeout, prefetch
        self.ctx = mp.get_context("fork")
        for name in preload:
            importlib.import_module(name)
        self.slots: list[_Slot] = []
        self.restarts = 0

    def __enter__(self) -> DeadlinePool:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        for slot in self.slots:
            try:
                slot.conn.send(None)
            except (BrokenPipeError, OSError):
                pass
        for slot in self.slots:
            slot.proc.join(timeout=1)
            if slot.proc.is_alive():
                slot.proc.kill()
                slot.proc.join()
            slot.conn.close()
        self.slots = []

    def map(self, tasks: Sequence[tuple], on_result: Callable[[int, Outcome], None] | None = None
            ) -> list[Outcome]:
        """Run ``fn(*task)`` for every task; results in task order. ``on_result(i, outcome)`` is called as
        each finishes (for progress bars)."""
        while len(self.slots) < min(self.workers, max(1, len(tasks))):
            self.slots.append(_Slot(self.ctx, self.fn))
        results: list[Outcome | None] = [None] * len(tasks)
        pending = deque(range(len(tasks)))
        done = 0

        def finish(i: int, outcome: Outcome) -> None:
            nonlocal done
            results[i] = outcome
            done += 1
            if on_result is not None:
                on_result(i, outcome)

        while done < len(tasks):
            now = time.monotonic()
            for slot in self.slots:
                while pending and len(slot.inflight) < self.prefetch:
                    i = pending.popleft()
                    if not slot.inflight:
                        slot.started = now
                    slot.inflight.append(i)
                    slot.conn.send((i, tasks[i]))
            busy = [s for s in self.slots if s.inflight]
            deadline = min(s.started for s in busy) + self.timeout
            ready = wait([s.conn for s in busy], timeout=max(0.0, deadline - time.monotonic()))
            for slot in busy:
                if slot.conn in ready:
                    try:
                        while slot.conn.poll():
                            i, status, value, error = slot.conn.recv()
                            slot.inflight.popleft()
                            slot.started = time.monotonic()
                            finish(i, Outcome(status, value, error))
                    except (EOFError, OSError):  # the worker died (e.g. out of memory)
                        self._replace(slot, pending, finish, Outcome("error", error="worker process died"))
                        continue
                if slot.inflight and time.monotonic() - slot.started > self.timeout:
                    self._replace(slot, pending, finish, Outcome("timeout"))
        return results  # type: ignore[return-value]

    def _replace(self, slot: _Slot, pending: deque, finish, outcome: Outcome) -> None:
        """Kill ``slot``'s worker, give its head task ``outcome``, requeue the rest, start a new worker."""
        slot.kill()
        self.restarts += 1
        head, rest = slot.inflight[0], list(slot.inflight)[1:]
        finish(head, outcome)
        pending.extendleft(reversed(rest))
        self.slots[self.slots.index(slot)] = _Slot(self.ctx, self.fn)
