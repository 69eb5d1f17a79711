"""The local sampler process: the fast engine on its own copy of the policy, in a child process, so that sampling
runs on some cores while the update runs on the others (`train.max_staleness` > 0 with the fast engine).

Weights go through shared memory, versioned: ``slots`` full copies of the policy's parameters (``torch``'s shared
memory, created once and handed to the child at its start). Version v is written into slot ``v % slots`` and
its number into ``versions[slot]``; a job names the slot and the version it must sample from, and the child
refuses a slot holding another (:class:`StaleEngineError`: never a silent sample from the wrong weights). The
child copies the slot into its model when a job starts and says so; the parent overwrites a slot only after
every job that names it has been copied (it waits, which the asynchronous schedule of :mod:`t1.rl.overlap`
never needs with ``max_staleness + 1`` slots).

The engine has the interface of a copy-holding engine (``shares_weights = False``, ``push_weights``,
``generate(..., version=v)``) plus ``submit`` / ``result`` to sample in the background. The child dies with
this process (``PR_SET_PDEATHSIG``); a child that dies is one line (:class:`~t1.rollout.base.EngineError`, the
exit code and the job), never a hang: every wait polls the child.
"""

from __future__ import annotations

import math
import os
import sys
import threading
import time
import traceback
from collections.abc import Iterable

import torch

from t1.rollout.base import EngineError, Sample, SamplingParams

POLL_S = 0.2


class StaleEngineError(EngineError):
    """The sampler was asked for weights it does not hold."""


class ProcessEngine:
    shares_weights = False
    overlaps = True  # may sample from one version while the next is written (slots): no need to wait for idle

    def __init__(self, model: torch.nn.Module, tokenizer, *, slots: int = 2, threads: int = 1, dtype: str = "auto",
                 max_batch: int = 512, start_timeout: float = 600.0):
        from t1.rollout.fast import FastEngine
        from t1.rollout.weights import full_parameters

        # the dtype the fast engine would pick here (the child's own measure could differ with its thread count)
        resolved = str(FastEngine(model, tokenizer, dtype=dtype)._dtype()).removeprefix("torch.")
        # one flat fp32 buffer per slot, each parameter a view into it: one shared-memory file per slot (a file
        # per tensor would hold (N + 1) × ~340 descriptors for a 1.5B model, past the usual limit of 1,024)
        self.layout, offset = [], 0
        for name, t in full_parameters(model):
            self.layout.append((name, offset, tuple(t.shape)))
            offset += t.numel()
        self.flat = [torch.zeros(offset, dtype=torch.float32).share_memory_() for _ in range(slots)]
        self.slots = [_views(flat, self.layout) for flat in self.flat]
        self.versions = torch.full((slots,), -1, dtype=torch.long).share_memory_()
        self.version: int | None = None
        self._pending: dict[int, int] = {}  # job id -> slot, until the child has copied the slot
        self._done: dict[int, list[Sample] | EngineError] = {}  # a job's samples, or the error it met
        self._next, self._ready, self._lock = 0, False, threading.Lock()
        ctx = torch.multiprocessing.get_context("spawn")  # tensors in the arguments travel as shared memory
        self.conn, child = ctx.Pipe()
        skeleton = _skeleton(model)
        self.proc = ctx.Process(target=_serve, daemon=True, name="t1-sampler",
                                args=(child, skeleton, tokenizer, self.flat, self.layout, self.versions, threads,
                                      resolved, max_batch, os.getpid()))
        self.proc.start()
        child.close()
        self._wait(lambda: self._ready, start_timeout, "starting")

    # ------------------------------------------------------------------------------------------ messages

    def _once(self, what: str) -> None:
        """Take at most one message (waiting up to POLL_S): a job's copy done (its slot is free again), its
        samples, or an error; a dead child is an error. Both threads call it (the sampler thread waiting for
        samples, the trainer waiting for a slot): a lock keeps the pipe whole, and neither holds it longer."""
        with self._lock:
            try:
                if not self.conn.poll(POLL_S):
                    if not self.proc.is_alive():
                        raise self._died(what)
                    return
                msg = self.conn.recv()
            except (EOFError, OSError):  # the pipe's other end is gone: the child died
                raise self._died(what) from None
        if msg[0] == "error":  # the job's own error, raised where its result is awaited
            _, kind, text, job = msg
            error = (StaleEngineError if kind == "stale" else EngineError)(f"sampler process: {text}")
            if job is None:
                raise error
            self._pending.pop(job, None)
            self._done[job] = error
        elif msg[0] == "loaded":
            self._pending.pop(msg[1], None)
        elif msg[0] == "done":
            self._done[msg[1]] = msg[2]
        elif msg[0] == "ready":
            self._ready = True
        else:
            raise EngineError(f"sampler process: unexpected message {msg[0]!r} while {what}")

    def _died(self, what: str) -> EngineError:
        self.proc.join(timeout=5)
        return EngineError(f"the sampler process died (exit code {self.proc.exitcode}) while {what}; the last "
                           "checkpoint is intact")

    def _wait(self, until, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not until():
            if time.monotonic() > deadline:
                raise EngineError(f"the sampler process did not answer in {timeout:.0f} s while {what}")
            self._once(what)

    # ------------------------------------------------------------------------------------------ the interface

    @torch.no_grad()
    def push_weights(self, weights: Iterable[tuple[str, torch.Tensor]], version: int) -> None:
        slot = version % len(self.slots)
        # a job still has to copy this slot's older version: wait (the schedule of t1.rl.overlap never does)
        self._wait(lambda: slot not in self._pending.values(), float("inf"), f"waiting to write version {version}")
        self.versions[slot] = -1  # a reader never sees a half-written slot as whole
        target, seen = self.slots[slot], set()
        for name, t in weights:
            if name not in target:
                raise EngineError(f"push: parameter {name} is not in the sampler's copy of the model")
            target[name].copy_(t.detach().to(torch.float32))
            seen.add(name)
        missing = set(target) - seen
        if missing:
            raise EngineError(f"push: {len(missing)} parameters missing (e.g. {sorted(missing)[0]})")
        self.versions[slot] = version
        self.version = version

    def submit(self, prompts: list[list[int]], seeds: list[int], params: SamplingParams, version: int) -> int:
        """Queue a job on version ``version`` (pushed already); its id for :meth:`result`."""
        slot = version % len(self.slots)
        if int(self.versions[slot]) != version:
            raise StaleEngineError(f"version {version} was never pushed (slot {slot} holds "
                                   f"{int(self.versions[slot])})")
        job, self._next = self._next, self._next + 1
        self._pending[job] = slot
        with self._lock:
            try:
                self.conn.send(("sample", job, slot, version, prompts, seeds, params))
            except OSError:
                raise self._died(f"sampling job {job}") from None
        return job

    def result(self, job: int, timeout: float = float("inf")) -> list[Sample]:
        self._wait(lambda: job in self._done, timeout, f"sampling job {job}")
        out = self._done.pop(job)
        if isinstance(out, EngineError):
            raise out
        return out

    def generate(self, prompts: list[list[int]], seeds: list[int], params: SamplingParams, version: int
                 ) -> list[Sample]:
        return self.result(self.submit(prompts, seeds, params, version))

    def sleep(self) -> None:  # a CPU process: nothing to free between steps
        pass

    def close(self) -> None:
        """Stop the child (killed after 10 s); a thread waiting for its samples then gets an EngineError."""
        if self.proc.is_alive():
            if self._lock.acquire(timeout=5):
                try:
                    self.conn.send(("stop",))
                except OSError:
                    pass
                finally:
                    self._lock.release()
            self.proc.join(timeout=10)
        if self.proc.is_alive():
            self.proc.kill()
            self.proc.join()
        self.conn.close()


def _views(flat: torch.Tensor, layout: list[tuple[str, int, tuple[int, ...]]]) -> dict[str, torch.Tensor]:
    return {name: flat[offset: offset + math.prod(shape)].view(shape) for name, offset, shape in layout}


def _skeleton(model: torch.nn.Module):
    """What the child rebuilds the model from: its config (the weights come through the slots). A LoRA model's
    base: the pushed weights are merged under the base model's names."""
    from t1.model import lora

    return lora.base_of(model).config


# ---------------------------------------------------------------------------------------------- the child


def _serve(conn, config, tokenizer, flat, layout, versions, threads: int, dtype: str, max_batch: int,
           parent: int) -> None:
    """The child's loop: one job at a time — check the slot's version, copy it into the model, say so, sample,
    send the samples. Errors go back as one message; the parent turns them into one line."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle; it stops this process
    _die_with(parent)
    torch.set_num_threads(max(1, threads))
    slots = [_views(f, layout) for f in flat]
    try:
        from transformers import AutoModelForCausalLM

        from t1.rollout.fast import FastEngine

        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32).eval()  # buffers initialised
        params = dict(model.named_parameters(remove_duplicate=False))
        engine = FastEngine(model, tokenizer, max_batch=max_batch, dtype=dtype)
        conn.send(("ready",))
    except Exception as e:  # noqa: BLE001 - reported to the parent as one line
        conn.send(("error", "start", f"could not start: {type(e).__name__}: {e}", None))
        return
    while True:
        try:
            msg = conn.recv()
        except (EOFError, OSError):
            return
        if msg[0] == "stop":
            return
        _, job, slot, version, prompts, seeds, sp = msg
        try:
            if int(versions[slot]) != version:
                conn.send(("error", "stale", f"job {job} asks for version {version}, slot {slot} holds "
                                             f"{int(versions[slot])}", job))
                continue
            with torch.no_grad():
                for name, t in slots[slot].items():
                    params[name].copy_(t)
            conn.send(("loaded", job))
            conn.send(("done", job, engine.generate(prompts, seeds, sp)))
        except Exception as e:  # noqa: BLE001
            conn.send(("error", "sample", f"job {job}: {type(e).__name__}: {e} "
                                          f"({traceback.format_exc(limit=1).splitlines()[-1]})", job))


def _die_with(parent: int) -> None:
    """Get SIGKILL when the parent dies (Linux); a parent already gone ends this process."""
    if sys.platform.startswith("linux"):
        import ctypes
        import signal

        ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGKILL))
    if os.getppid() != parent:
        os._exit(1)
