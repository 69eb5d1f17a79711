"""Asynchronous RL (train.max_staleness, t1.rl.overlap): the fast engine's sampler process samples the next
batch while the update runs; a fixed schedule, so results do not depend on timing and resume is exact."""

import math
import os
import signal
import socket
import subprocess
import sys
import time

import pytest
import torch

from t1 import config as C
from t1.rl.batch import Mismatch
from t1.rl.config import RLConfig
from t1.rl.overlap import sampled_from
from t1.rollout.base import EngineError
from t1.stages.rl import RLTrainer, train_rl
from tests.stages.test_rl import rl_args, rl_cfg, rows, weights

ASYNC = ("train.max_staleness=1", "train.steps=4", "train.save_every=2", "train.rollouts_every=1",
         "train.rollouts_kept=2")


def _slow(monkeypatch, name, seconds):
    real = getattr(RLTrainer, name)

    def slowed(self, *args, **kwargs):
        time.sleep(seconds)
        return real(self, *args, **kwargs)

    monkeypatch.setattr(RLTrainer, name, slowed)


def test_each_batch_is_exactly_one_version_old_whichever_side_is_slower(tiny_model_dir, tmp_path, monkeypatch):
    threads = torch.get_num_threads()
    train_rl(rl_cfg(tiny_model_dir, tmp_path / "a", *ASYNC), progress=False)
    assert torch.get_num_threads() == threads  # the cores lent to the sampler process are given back
    m = rows(tmp_path / "a" / "metrics.jsonl")
    assert [r["sampling/version"] for r in m] == [0, 0, 1, 2] == [sampled_from(s, 1) for s in range(4)]
    assert [r["sampling/staleness"] for r in m] == [0, 1, 1, 1] and all("time_wait" in r for r in m)
    assert all(r["sampling/is_weight_mean"] > 0 for r in m)  # is_cap: 2 by default when N > 0
    assert "is_cap: 2.0" in (tmp_path / "a" / "config.yaml").read_text()
    with monkeypatch.context() as mp:
        _slow(mp, "update", 0.5)  # the sampler is always ahead
        train_rl(rl_cfg(tiny_model_dir, tmp_path / "b", *ASYNC), progress=False)
    with monkeypatch.context() as mp:
        _slow(mp, "_draw", 0.5)  # the trainer always waits
        train_rl(rl_cfg(tiny_model_dir, tmp_path / "c", *ASYNC), progress=False)
    a = weights(tmp_path / "a" / "final")
    for other in ("b", "c"):
        assert all(torch.equal(a[k], v) for k, v in weights(tmp_path / other / "final").items())
        assert [r["reward"] for r in rows(tmp_path / other / "metrics.jsonl")] == [r["reward"] for r in m]
        assert [r["sampling/version"] for r in rows(tmp_path / other / "metrics.jsonl")] == [0, 0, 1, 2]
    sync = rl_cfg(tiny_model_dir, tmp_path / "sync", "train.steps=4")
    train_rl(sync, progress=False)
    assert [r["sampling/staleness"] for r in rows(tmp_path / "sync" / "metrics.jsonl")] == [0, 0, 0, 0]


def test_a_killed_run_resumes_to_the_uninterrupted_result(tiny_model_dir, tmp_path, monkeypatch):
    """Killed during step 4 (after the checkpoint at step 2, which holds step 3's batch sampled from version 1):
    --resume gives the uninterrupted run's weights and logs."""
    full, cut = tmp_path / "full", tmp_path / "cut"
    train_rl(rl_cfg(tiny_model_dir, full, *ASYNC), progress=False)
    real = RLTrainer.update

    def killed_at_step_4(self, step, batch):
        if step == 3:
            raise KeyboardInterrupt
        return real(self, step, batch)

    with monkeypatch.context() as mp:
        mp.setattr(RLTrainer, "update", killed_at_step_4)
        with pytest.raises(KeyboardInterrupt):
            train_rl(rl_cfg(tiny_model_dir, cut, *ASYNC), progress=False)
    state = torch.load(cut / "checkpoints" / "step-0000002" / "trainer_state.pt", weights_only=True)
    assert list(state["pending"]) == [0] and list(state["pending"][0]) == [2]  # process 0's share of step 3
    assert state["pending"][0][2]["version"] == 1
    train_rl(rl_cfg(tiny_model_dir, cut, *ASYNC), resume=True, progress=False)
    a, b = weights(full / "final"), weights(cut / "final")
    assert all(torch.equal(a[k], b[k]) for k in a)
    for log in ("metrics.jsonl", "rollouts.jsonl"):
        assert ([(r["step"], r["reward"]) for r in rows(cut / log)]
                == [(r["step"], r["reward"]) for r in rows(full / log)])


def test_a_dead_sampler_process_is_one_line_and_the_checkpoint_stays(tiny_model_dir, tmp_path, monkeypatch):
    out = tmp_path / "run"
    real = RLTrainer.update

    def kill_the_sampler_at_step_3(self, step, batch):
        if step == 2:
            os.kill(self.engine.proc.pid, signal.SIGKILL)
        return real(self, step, batch)

    monkeypatch.setattr(RLTrainer, "update", kill_the_sampler_at_step_3)
    with pytest.raises(EngineError, match=r"the sampler process died \(exit code -9\) while .*; the last "
                                          "checkpoint is intact"):  # the batch of step 4 or 5, in flight
        train_rl(rl_cfg(tiny_model_dir, out, *ASYNC, "train.steps=6"), progress=False)
    assert [r["step"] for r in rows(out / "metrics.jsonl")] in ([1, 2, 3], [1, 2, 3, 4])
    assert (out / "checkpoints" / "step-0000002" / "trainer_state.pt").exists()
    monkeypatch.undo()
    train_rl(rl_cfg(tiny_model_dir, out, *ASYNC, "train.steps=6"), resume=True, progress=False)
    assert [r["step"] for r in rows(out / "metrics.jsonl")] == [1, 2, 3, 4, 5, 6]


def test_engines_that_cannot_overlap_are_refused_in_one_line(tiny_model_dir, tmp_path):
    with pytest.raises(C.ConfigError, match="the colocated vllm engine shares the GPU with the update"):
        RLTrainer(rl_cfg(tiny_model_dir, tmp_path / "v", "train.max_staleness=1", "rollout.engine=vllm"))
    with pytest.raises(C.ConfigError, match="max_staleness: must be in"):
        rl_cfg(tiny_model_dir, tmp_path / "n", "train.max_staleness=-1")
    assert C.load(RLConfig, None, [f"model={tiny_model_dir}"]).rollout.is_cap is None  # resolved per run
    from t1.rl.config import resolve_anchor

    pinned = C.load(RLConfig, None, [f"model={tiny_model_dir}", "train.max_staleness=1", "rollout.is_cap=0"])
    assert "stale batches are not corrected" in resolve_anchor(pinned)[1]  # a sync run's config.yaml reused


def test_the_is_weights_of_a_stale_batch_are_the_truncated_ratio():
    """Trainer log-probs log softmax(logits) against the sampler's (an older version's) log-probs of the same
    tokens: weights min(π_train / π_sampler, 2), by hand."""
    logits = torch.tensor([[2.0, 0.0, -1.0], [0.0, 1.0, 0.0], [0.5, 0.5, 3.0]])
    targets = torch.tensor([0, 1, 2])
    sampler = [-0.3, -0.2, -3.0]  # the stale policy's log-probs of those tokens
    mine = [2 - math.log(math.exp(2) + 1 + math.exp(-1)), 1 - math.log(2 + math.e),
            3 - math.log(2 * math.exp(0.5) + math.exp(3))]
    by_hand = [min(2.0, math.exp(a - b)) for a, b in zip(mine, sampler)]  # ≈ 1.14, 0.70, 2 (17.2 capped)
    m = Mismatch(temperature=1.0, top_p=1.0, cap=2.0)
    torch.testing.assert_close(m(logits, targets, torch.tensor(sampler)), torch.tensor(by_hand))
    assert 1 < by_hand[0] < 2 and by_hand[1] < 1 and by_hand[2] == 2.0 and m.clipped == 1


@pytest.mark.slow
def test_kill_9_then_resume_equals_the_uninterrupted_run(tiny_model_dir, tmp_path):
    """`t1 rl` with N = 1 killed with SIGKILL (the sampler process dies with it) after a checkpoint, then
    `--resume`: the uninterrupted run's weights and metrics."""
    full, cut = tmp_path / "full", tmp_path / "cut"
    extra = ["train.max_staleness=1", "train.steps=40", "train.save_every=2", "train.rollouts_every=0"]
    train_rl(rl_cfg(tiny_model_dir, full, *extra), progress=False)
    args = [sys.executable, "-m", "t1", "rl", *rl_args(tiny_model_dir, cut, *extra), "--quiet"]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not (cut / "checkpoints" / "step-0000004").exists() and proc.poll() is None:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL and not (cut / "final").exists()  # killed mid-run
    assert subprocess.run([*args, "--resume"], capture_output=True).returncode == 0
    a, b = weights(full / "final"), weights(cut / "final")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert ([(r["step"], r["reward"]) for r in rows(cut / "metrics.jsonl")]
            == [(r["step"], r["reward"]) for r in rows(full / "metrics.jsonl")])


@pytest.mark.slow
def test_two_processes_checkpoint_each_ones_batches_and_resume_exactly(tiny_model_dir, tmp_path):
    """torchrun, 2 processes, N = 1: each process's share of the next step's batch goes into the checkpoint (by
    process), so a run SIGKILLed after a checkpoint and resumed ends with the uninterrupted run's weights."""
    full, cut = tmp_path / "full", tmp_path / "cut"
    extra = ["train.max_staleness=1", "train.steps=30", "train.save_every=2", "train.rollouts_every=0",
             "rollout.prompts_per_step=4", "train.precision=fp32", "train.fast_forward=false"]

    def torchrun(out, *more):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(port),
               "-m", "t1", "rl", *rl_args(tiny_model_dir, out, *extra), "--quiet", *more]
        return subprocess.Popen(cmd, env={**os.environ, "OMP_NUM_THREADS": "1"}, stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, text=True, start_new_session=True)

    assert torchrun(full).wait(timeout=240) == 0
    proc = torchrun(cut)
    deadline = time.monotonic() + 240
    while not (cut / "checkpoints" / "step-0000004").exists() and proc.poll() is None:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (cut / "final").exists()
    state = torch.load(cut / "checkpoints" / "step-0000004" / "trainer_state.pt", weights_only=True)
    assert sorted(state["pending"]) == [0, 1] and all(list(p) == [4] for p in state["pending"].values())
    resumed = torchrun(cut, "--resume")
    assert resumed.wait(timeout=240) == 0, resumed.stderr.read()[-3000:]
    a, b = weights(full / "final"), weights(cut / "final")
    assert all(torch.equal(a[k], b[k]) for k in a)
