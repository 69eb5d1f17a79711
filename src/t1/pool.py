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

The parent never blocks on a worker: it waits on the clock and on results only. A task is sent to a worker
that is idle (it is reading, so the send completes however large the task), or queued behind the worker's
current task only while the bytes queued there stay under :data:`QUEUE_BYTES`, far below what the pipe buffers
(a send to a busy worker beyond that would block until the worker finished — past any deadline).

A task may :func:`note` a value as it goes (the math grader notes the answer it extracted); a task that is
then stopped (time limit, crash) reports that value in its :class:`Outcome`, so the parent never redoes the
work of a task it stopped.
"""

from __future__ import annotations

import importlib
import math
import multiprocessing as mp
import pickle
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
    value: Any = None  # "ok": the result; else the last value the task noted (:func:`note`), if any
    error: str = ""


QUEUE_BYTES = 16 << 10  # bytes of tasks queued behind a busy worker's current one (a pipe buffers ≥ 64 KB)

_current = None  # in a worker process: (connection, index of the task it runs)


def note(value: Any) -> None:
    """From inside a task: send ``value`` to the parent now; if the task is then stopped (time limit, crash),
    its :class:`Outcome` carries the last value noted. Outside a pool's worker it does nothing."""
    if _current is not None:
        conn, idx = _current
        conn.send((idx, "note", value, ""))


def _worker(conn, fn: Callable) -> None:  # pragma: no cover - runs in the child
    global _current
    while True:
        try:
            msg = conn.recv()
        except EOFError:
            return
        if msg is None:
            return
        idx, args = msg
        _current = (conn, idx)
        try:
            conn.send((idx, "ok", fn(*args), ""))
        except Exception as e:  # a task's own failure is its result, the worker lives on
            conn.send((idx, "error", None, f"{type(e).__name__}: {e}"[:500]))
        _current = None


class _Slot:
    def __init__(self, ctx, fn):
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=_worker, args=(child, fn), daemon=True)
        with warnings.catch_warnings():  # Python ≥ 3.12 warns on fork with threads; see the module doc
            warnings.simplefilter("ignore", DeprecationWarning)
            self.proc.start()
        child.close()
        self.inflight: deque[tuple[int, int]] = deque()  # (task index, bytes sent), oldest first
        self.started = 0.0  # when the task at the head of ``inflight`` began
        self.noted: Any = None  # what the head task noted so far

    def queued_bytes(self) -> int:
        """Bytes sent that the worker reads only after its current task: all but the head's."""
        return sum(size for _, size in list(self.inflight)[1:])

    def kill(self) -> None:
        self.proc.kill()
        self.proc.join()
        self.conn.close()


class _Run:
    """One :meth:`DeadlinePool.map` call's bookkeeping: results, the tasks not yet sent, the progress callback."""

    def __init__(self, tasks: Sequence[tuple], on_result):
        self.tasks, self.on_result = tasks, on_result
        self.results: list[Outcome | None] = [None] * len(tasks)
        self.pending = deque(range(len(tasks)))
        self.payloads: dict[int, bytes] = {}
        self.done = 0

    def payload(self, i: int) -> bytes:
        if i not in self.payloads:
            self.payloads[i] = pickle.dumps((i, self.tasks[i]), protocol=pickle.HIGHEST_PROTOCOL)
        return self.payloads[i]

    def finish(self, i: int, outcome: Outcome) -> None:
        self.results[i] = outcome
        self.payloads.pop(i, None)
        self.done += 1
        if self.on_result is not None:
            self.on_result(i, outcome)


def check_limits(workers: int | None, timeout: float) -> None:
    """Raise ValueError unless ``workers`` (None: not given) is an integer ≥ 1 and ``timeout`` a finite number
    of seconds > 0."""
    if workers is not None and (isinstance(workers, bool) or not isinstance(workers, int) or workers < 1):
        raise ValueError(f"workers must be an integer ≥ 1 (got {workers!r})")
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not (
            timeout > 0 and math.isfinite(timeout)):
        raise ValueError(f"timeout must be a number of seconds > 0 (got {timeout!r})")


class DeadlinePool:
    """``DeadlinePool(fn, workers=2, timeout=5.0).map(list_of_arg_tuples)`` -> list of :class:`Outcome`.

    ``fn`` must be importable at module level (it is sent to the workers by reference).
    """

    def __init__(self, fn: Callable, workers: int, timeout: float, preload: Sequence[str] = (),
                 prefetch: int = 4):
        check_limits(workers, timeout)
        if isinstance(prefetch, bool) or not isinstance(prefetch, int) or prefetch < 1:
            raise ValueError(f"prefetch must be an integer ≥ 1 (got {prefetch!r})")
        self.fn, self.workers, self.timeout, self.prefetch = fn, workers, timeout, prefetch
        self.ctx = mp.get_context("fork")
        for name in preload:
            importlib.import_module(name)
        self.slots: list[_Slot] = []
        self.restarts = 0

    def start(self) -> None:
        """Fork every worker now rather than at the first :meth:`map`: a caller about to start CUDA, NCCL or
        a vLLM engine forks its workers while it holds none of their threads (a fork copies the parent at
        that moment; only the forking thread survives in the child)."""
        while len(self.slots) < self.workers:
            self.slots.append(_Slot(self.ctx, self.fn))

    def __enter__(self) -> DeadlinePool:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        for slot in self.slots:
            if slot.inflight:  # busy (an interrupted map): it would read the stop message only when done
                slot.proc.kill()
                continue
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
        each finishes (for progress bars). Every task ends within ``timeout`` seconds of starting."""
        for k, slot in enumerate(self.slots):
            if slot.inflight:  # left busy by a map that was interrupted: its results are not this map's
                slot.kill()
                self.slots[k] = _Slot(self.ctx, self.fn)
        while len(self.slots) < min(self.workers, max(1, len(tasks))):
            self.slots.append(_Slot(self.ctx, self.fn))
        run = _Run(tasks, on_result)
        while run.done < len(tasks):
            self._dispatch(run)
            busy = [s for s in self.slots if s.inflight]
            deadline = min(s.started for s in busy) + self.timeout
            wait([s.conn for s in busy], timeout=max(0.0, deadline - time.monotonic()))
            for slot in busy:
                if not self._receive(slot, run):
                    continue
                if slot.inflight and time.monotonic() - slot.started > self.timeout:
                    self._replace(slot, run, Outcome("timeout", slot.noted))
        return run.results  # type: ignore[return-value]

    def _dispatch(self, run: _Run) -> None:
        """Send pending tasks, in order, each to the least busy worker that can take it without blocking."""
        while run.pending:
            i = run.pending[0]
            size = len(run.payload(i))
            free = [s for s in self.slots if not s.inflight or (
                len(s.inflight) < self.prefetch and s.queued_bytes() + size <= QUEUE_BYTES)]
            if not free:
                return
            slot = min(free, key=lambda s: len(s.inflight))
            run.pending.popleft()
            if not slot.inflight:
                slot.started, slot.noted = time.monotonic(), None
            slot.inflight.append((i, size))
            try:
                slot.conn.send_bytes(run.payload(i))
            except OSError:  # the worker died since its last result
                self._replace(slot, run, Outcome("error", slot.noted, "worker process died"))

    def _receive(self, slot: _Slot, run: _Run) -> bool:
        """Take every message waiting from ``slot``'s worker, without blocking; False if it died (replaced)."""
        try:
            while slot.inflight and slot.conn.poll():
                i, status, value, error = slot.conn.recv()
                if status == "note":
                    slot.noted = value
                    continue
                slot.inflight.popleft()
                run.finish(i, Outcome(status, value if status == "ok" else slot.noted, error))
                slot.started, slot.noted = time.monotonic(), None
        except (EOFError, OSError):  # the worker died (e.g. out of memory)
            self._replace(slot, run, Outcome("error", slot.noted, "worker process died"))
            return False
        return True

    def _replace(self, slot: _Slot, run: _Run, outcome: Outcome) -> None:
        """Kill ``slot``'s worker, give its head task ``outcome``, requeue the rest, start a new worker."""
        slot.kill()
        self.restarts += 1
        head, rest = slot.inflight[0][0], [i for i, _ in list(slot.inflight)[1:]]
        run.finish(head, outcome)
        run.pending.extendleft(reversed(rest))
        self.slots[self.slots.index(slot)] = _Slot(self.ctx, self.fn)
