"""Asynchronous RL (``train.max_staleness`` = N > 0): the next batches are sampled while the update runs.

The schedule is fixed, not a race: step t's batch is sampled from the weights of version
:func:`sampled_from` (t) = max(0, t − N) (version v = the weights after v optimizer steps), by one sampler
thread, in step order. After the update of step t the trainer pushes version t + 1 to the engine and queues
the batch of step t + 1 + N, which samples while the next updates run; the update of step t waits for its
batch if it is not done. Consequences:

* no batch is ever more than N versions old, and every batch is exactly as old as the schedule says — so the
  run's result does not depend on which side is slower (a slow sampler makes the trainer wait, a slow trainer
  the sampler), and the same config and seeds give the same run;
* a checkpoint at step s holds the batches already sampled from versions before s (steps s … s + N − 1, at
  most N; it waits for them), and a resumed run pushes version s and queues the rest: it samples exactly
  what the uninterrupted run sampled — resume is exact;
* a stale batch is corrected as in AReaL's decoupled PPO: each token's term is weighted by the truncated
  importance ratio min(π_θ / π_sampler, ``rollout.is_cap``) — the sampler's own log-probs are the behaviour
  policy, π_θ the weights before this update; ``is_cap`` is 2 by default when N > 0 — and the PPO ratio is taken
  against those weights (1 with one optimizer step per batch).

Engines that hold one version at a time (``vllm_server``) are pushed only once every queued batch of an
older version is done; the local sampler process (:class:`t1.rollout.process.ProcessEngine`) keeps N + 1
versions in shared memory and is never waited for.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import torch

from t1.config import ConfigError
from t1.rl.batch import Batch
from t1.rollout.base import SamplingParams
from t1.rollout.config import resolve as resolve_engine


def check(cfg, engine: str, world: int) -> int:
    """``train.max_staleness`` if this run can sample asynchronously with ``engine`` (the resolved name), else
    one ConfigError saying why, before any weights load."""
    n = cfg.train.max_staleness
    if not n:
        return 0
    if engine == "vllm":
        raise ConfigError("train.max_staleness: the colocated vllm engine shares the GPU with the update, so it "
                          "cannot sample while the update runs; use rollout.engine=vllm_server, or 0")
    if engine not in ("fast", "vllm_server"):
        raise ConfigError(f"train.max_staleness: engine {engine} cannot sample while the update runs; use fast "
                          "(a CPU sampler process) or vllm_server")
    if engine == "fast" and torch.cuda.is_available():
        raise ConfigError("train.max_staleness: the fast engine's sampler process runs on the CPU; on GPUs use "
                          "rollout.engine=vllm_server")
    if cfg.algo.dynamic_sampling and world > 1:
        raise ConfigError("train.max_staleness: dynamic sampling's extra rounds are agreed between processes, "
                          "which the sampler thread cannot do while the update runs; use one process, or 0")
    return n


def sampler_process(cfg, staleness: int) -> tuple[int, int] | None:
    """(versions kept, CPU threads) for the fast engine's sampler process (None: no process), and this
    process's threads set to the cores the sampler leaves (``train.sampler_threads``; 0 = half each)."""
    if not staleness or resolve_engine(cfg.rollout.engine) != "fast":
        return None
    cores = torch.get_num_threads()  # what this process was given (OMP_NUM_THREADS; `t1 sweep --jobs` sets it)
    threads = cfg.train.sampler_threads or max(1, cores // 2)
    torch.set_num_threads(max(1, cores - threads))
    return staleness + 1, threads


def sampled_from(step: int, staleness: int) -> int:
    """The weight version step ``step``'s batch is sampled from."""
    return max(0, step - staleness)


def _done(value) -> Future:
    f: Future = Future()
    f.set_result(value)
    return f


class Overlap:
    """The sampler thread and the batches in flight; see the module doc. ``sample(step, version)`` draws and
    scores step ``step``'s batch from weights ``version`` (in the sampler thread) and returns (batch, shown
    rows, phase times); ``push(version)`` hands the engine the current weights (in the trainer's thread)."""

    def __init__(self, staleness: int, steps: int, sample: Callable[[int, int], Any], push: Callable[[int], None],
                 overlaps: bool, main: bool = True):
        self.n, self.steps, self.sample, self.push, self.overlaps = staleness, steps, sample, push, overlaps
        self.main = main  # this process prints the notes
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="t1-sampler")
        self.jobs: dict[int, tuple[Future, int]] = {}
        self.carry = 0.0  # seconds `advance` waited for batches (an engine holding one version): the next wait
        self.stopping = False  # set by `close`: a job not yet scoring stops (rollout checks it)

    def _queue(self, step: int, version: int | None = None) -> None:
        if step < self.steps and step not in self.jobs:
            v = sampled_from(step, self.n) if version is None else version
            self.jobs[step] = (self.pool.submit(self.sample, step, v), v)

    def begin(self, start: int, pending: dict[int, Any]) -> None:
        """At step ``start`` (0, or a resumed run's): the checkpoint's sampled batches, version ``start`` pushed,
        the batches sampled from it queued."""
        missing = []
        for t in range(start, min(self.steps, start + self.n + 1)):
            if t in pending:  # (the batch, the version it was sampled from)
                self.jobs[t] = (_done(pending[t][0]), pending[t][1])
            elif sampled_from(t, self.n) < start:  # a run extended past its end never sampled these
                missing.append(t)
        if missing and self.main:
            print(f"rl: note: the checkpoint at step {start} holds no batch for step(s) "
                  f"{', '.join(str(t + 1) for t in missing)} (the run ended there): sampled now from version "
                  f"{start}, fresher than an uninterrupted run's", file=sys.stderr)
        self.push(start)
        for t in range(start, min(self.steps, start + self.n + 1)):
            self._queue(t, start if t in missing else None)

    def take(self, step: int) -> tuple[Any, int, float]:
        """Step ``step``'s batch (waiting for it if needed), the version it was sampled from, the seconds
        waited."""
        t0 = time.perf_counter()
        future, version = self.jobs.pop(step)
        out = future.result()
        waited, self.carry = time.perf_counter() - t0 + self.carry, 0.0
        return out, version, waited

    def advance(self, version: int) -> None:
        """After the update that made ``version``: push it (an engine holding one version: once every queued
        batch is done) and queue the batch sampled from it."""
        if version + self.n >= self.steps:  # no batch will be sampled from it (the run's last N versions)
            return
        if not self.overlaps:
            t0 = time.perf_counter()
            for f, _ in self.jobs.values():
                f.result()
            self.carry += time.perf_counter() - t0
        self.push(version)
        self._queue(version + self.n)

    def pending(self, version: int) -> dict[int, tuple[Any, int]]:
        """For a checkpoint at ``version``: the batches sampled from older versions (waited for), each with its
        version."""
        return {t: (f.result(), v) for t, (f, v) in sorted(self.jobs.items()) if v < version}

    def close(self, wait: bool) -> None:
        """Stop: queued batches cancelled, a running one stopped before it scores; ``wait`` for the sampler
        thread (when the engine is closed already, so that it cannot hang in a call to it)."""
        self.stopping = True
        for f, _ in self.jobs.values():
            f.cancel()
        self.pool.shutdown(wait=wait, cancel_futures=True)


# ------------------------------------------------------------------------------- a batch in a checkpoint


def batch_state(sampled: tuple[Batch, list[dict], dict], version: int) -> dict:
    """A sampled batch as plain containers and tensors (``trainer_state.pt`` loads with ``weights_only``)."""
    batch, shown, times = sampled
    p = batch.params
    logp = None if batch.sampler_logp is None else [
        None if x is None else torch.tensor(x, dtype=torch.float32) for x in batch.sampler_logp]
    return {"version": version, "ids": [torch.tensor(x, dtype=torch.int64) for x in batch.ids],
            "n_prompt": batch.n_prompt, "reward": batch.reward,
            "stats": {k: torch.as_tensor(v) for k, v in batch.stats.items()}, "group": batch.group,
            "params": [p.temperature, p.top_p, p.max_new_tokens, list(p.stop_ids)], "is_cap": batch.is_cap,
            "sampler_logp": logp, "shown": shown, "times": times}


def batch_from_state(d: dict) -> tuple[tuple[Batch, list[dict], dict], int]:
    t, top_p, budget, stops = d["params"]
    params = SamplingParams(float(t), float(top_p), int(budget), tuple(int(s) for s in stops))
    logp = None if d["sampler_logp"] is None else [None if x is None else x.tolist() for x in d["sampler_logp"]]
    batch = Batch([x.tolist() for x in d["ids"]], d["n_prompt"], d["reward"], dict(d["stats"]), int(d["group"]),
                  params, float(d["is_cap"]), logp)
    return (batch, d["shown"], dict(d["times"])), int(d["version"])


def gather_pending(acc, mine: dict[int, dict]) -> dict[int, dict[int, dict]]:
    """Every process's pending batches (its share of each step), by process index, on the main process (the
    one that writes ``trainer_state.pt``); a collective: every process calls it."""
    if acc.num_processes == 1:
        return {0: mine}
    import torch.distributed as dist

    got = [None] * acc.num_processes if acc.is_main_process else None
    dist.gather_object(mine, got, dst=0)
    return dict(enumerate(got)) if acc.is_main_process else {}


def my_pending(state: dict | None, rank: int, world: int) -> dict[int, tuple]:
    """This process's pending batches from a checkpoint's state (none: {}); a checkpoint written by another
    number of processes cannot give each its share: refused in one line."""
    pending = (state or {}).get("pending") or {}
    if not pending:
        return {}
    if len(pending) != world:
        raise ConfigError(f"the checkpoint holds batches sampled by {len(pending)} process(es) for the next "
                          f"steps (train.max_staleness); resume with {len(pending)} process(es), not {world}")
    return {t: batch_from_state(b) for t, b in pending[rank].items()}
