import os
import time

import pytest

from t1.pool import DeadlinePool, note


def _work(kind, x):
    if kind == "note":
        note(f"noted {len(x)}")
        time.sleep(30)
    if kind == "sleep":
        time.sleep(x)
    elif kind == "raise":
        raise RuntimeError(f"bad {x}")
    elif kind == "die":
        os._exit(3)
    return x * 2


def test_results_in_order_with_timeouts_errors_and_crashes():
    tasks = ([("ok", 1), ("sleep", 30), ("ok", 2), ("raise", 5), ("die", 0), ("ok", 3)]
             + [("ok", i) for i in range(20)])
    seen = []
    with DeadlinePool(_work, workers=2, timeout=0.5, prefetch=3) as pool:
        start = time.perf_counter()
        out = pool.map(tasks, on_result=lambda i, o: seen.append(i))
        assert time.perf_counter() - start < 25  # well under the 30 s the sleeping task would take unbounded
    assert [o.status for o in out[:6]] == ["ok", "timeout", "ok", "error", "error", "ok"]
    assert out[0].value == 2 and out[5].value == 6
    assert "RuntimeError: bad 5" in out[3].error
    assert "died" in out[4].error
    assert [o.value for o in out[6:]] == [2 * i for i in range(20)]
    assert sorted(seen) == list(range(len(tasks)))


def test_bad_arguments():
    with pytest.raises(ValueError, match="workers"):
        DeadlinePool(_work, workers=0, timeout=1)
    with pytest.raises(ValueError, match="timeout"):
        DeadlinePool(_work, workers=1, timeout=0)


def test_a_stopped_task_reports_what_it_noted_and_large_tasks_never_block():
    big = "x" * (1 << 20)  # far more than a pipe buffers: sent to a busy worker, the send would block
    with DeadlinePool(_work, workers=1, timeout=0.5) as pool:
        start = time.perf_counter()
        out = pool.map([("note", big), ("ok", 1), ("note", big), ("die", big), ("ok", 2)])
        assert time.perf_counter() - start < 3 * 0.5 * 2 + 5  # two tasks cut at the limit
    assert [o.status for o in out] == ["timeout", "ok", "timeout", "error", "ok"]
    assert out[0].value == out[2].value == f"noted {len(big)}" and out[3].value is None
    assert note("outside a worker") is None  # a no-op in the parent


def test_start_forks_every_worker_before_the_first_map():
    """A caller about to start CUDA or vLLM forks its workers first (`t1 rl` does); the first map uses them."""
    with DeadlinePool(_work, workers=3, timeout=5) as pool:
        pool.start()
        pids = [s.proc.pid for s in pool.slots]
        assert len(pids) == 3 and all(s.proc.is_alive() for s in pool.slots)
        assert [o.value for o in pool.map([("ok", i) for i in range(6)])] == [2 * i for i in range(6)]
        assert [s.proc.pid for s in pool.slots] == pids and pool.restarts == 0


@pytest.mark.parametrize("local, expected", [(None, 8), ("1", 8), ("2", 4), ("3", 2), ("16", 1), ("x", 8)])
def test_math_graders_share_the_cores_among_a_launchs_local_processes(monkeypatch, local, expected):
    """Every training rank of a node forks its own graders: cores / LOCAL_WORLD_SIZE each (torchrun and
    accelerate set it), not all the node's cores per rank."""
    from t1.tasks import math as math_task

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(8)), raising=False)
    if local is None:
        monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    else:
        monkeypatch.setenv("LOCAL_WORLD_SIZE", local)
    assert math_task.default_workers() == expected
    task = math_task.MathTask()
    try:
        grader = task.start()
        assert grader.pool.workers == len(grader.pool.slots) == expected
    finally:
        task.close()
