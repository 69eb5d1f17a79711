"""Dynamic sampling (t1.rl.dynamic): groups without a signal are dropped and more prompts drawn until the step is
full or the round cap is reached; the batch always has P groups."""

import textwrap

import pytest
import torch
from safetensors.torch import load_file

from t1.rl.dynamic import Drawn, choose, split_groups
from t1.stages.rl import train_rl
from tests.stages.test_rl import rl_cfg, rows


def test_split_and_choose_by_hand():
    reward = torch.tensor([1.0, 0.0, 1.0, 1.0, -1.0, -1.0, 0.0, 1.0])  # groups of 2: signal, uniform, ...
    assert split_groups(reward, 2) == ([0, 3], [1, 2])
    assert choose([0, 3, 5], [1, 2], 2) == ([0, 3], 2, 0)  # enough: every uniform group dropped
    assert choose([0, 3], [1, 2, 4], 4) == ([0, 1, 2, 3], 1, 2)  # short: the first dropped ones fill, in order


def test_drawn_take_and_cat_keep_samples_aligned():
    def drawn(offset):
        n = 4
        return Drawn([[offset + i] for i in range(n)], [f"s{offset + i}" for i in range(n)], list(range(n)),
                     list(range(n)), list(range(n)), torch.arange(n).float() + offset,
                     {"truncated": torch.zeros(n)}, torch.arange(n).float() + offset, torch.zeros(n), None)
    both = Drawn.cat([drawn(0), drawn(10)])
    picked = both.take([5, 0])
    assert picked.prompts == [[11], [0]] and picked.samples == ["s11", "s0"] and picked.reward.tolist() == [11, 0]


REWARDS = '''
def const(prompt, response, row):
    return 1.0

def length(prompt, response, row):
    return len(response) / 100
'''


@pytest.fixture
def module(tmp_path):
    path = tmp_path / "dyn_rewards.py"
    path.write_text(textwrap.dedent(REWARDS))
    return path


NO_PENALTIES = ("penalties.truncated=false", "penalties.garbage=false", "penalties.repetitive=false")


def test_every_group_uniform_draws_up_to_the_cap_then_fills(tiny_model_dir, tmp_path, module):
    out = tmp_path / "const"
    train_rl(rl_cfg(tiny_model_dir, out, "train.steps=2", f"data.reward={module}:const", *NO_PENALTIES,
                    "algo.dynamic_sampling=true", "algo.dynamic_max_rounds=3"), progress=False)
    for m in rows(out / "metrics.jsonl"):
        assert m["dynamic/rounds"] == 3 and m["dynamic/groups_filled"] == 8  # P = 8 groups, none informative
        assert m["dynamic/groups_dropped"] == 3 * 8 - 8 and m["selected"] == 1.0


def test_informative_groups_need_one_round(tiny_model_dir, tmp_path, module):
    out = tmp_path / "length"
    train_rl(rl_cfg(tiny_model_dir, out, "train.steps=2", f"data.reward={module}:length", *NO_PENALTIES,
                    "algo.dynamic_sampling=true"), progress=False)
    for m in rows(out / "metrics.jsonl"):
        assert m["dynamic/rounds"] == 1 and m["dynamic/groups_dropped"] == 0 and m["dynamic/groups_filled"] == 0


def test_mixed_groups_are_refilled_and_resume_is_exact(tiny_model_dir, tmp_path):
    """T1's own rewards on a random tiny model: most groups all −1 (truncated), a few with a signal; extra
    rounds replace uniform groups; a run cut and resumed equals an uninterrupted one."""
    args = ("algo.dynamic_sampling=true", "algo.dynamic_max_rounds=4", "train.save_every=2")
    full, cut = tmp_path / "full", tmp_path / "cut"
    train_rl(rl_cfg(tiny_model_dir, full, "train.steps=4", *args), progress=False)
    m = rows(full / "metrics.jsonl")
    assert any(r["dynamic/rounds"] > 1 for r in m)
    assert all(r["dynamic/groups_filled"] <= 8 for r in m)
    train_rl(rl_cfg(tiny_model_dir, cut, "train.steps=2", *args), progress=False)
    train_rl(rl_cfg(tiny_model_dir, cut, "train.steps=4", *args), resume=True, progress=False)
    keys = ("reward", "dynamic/rounds", "dynamic/groups_dropped", "dynamic/groups_filled", "loss", "kl")
    assert [[r[k] for k in keys] for r in rows(cut / "metrics.jsonl")] == [[r[k] for k in keys] for r in m]
    a, b = (load_file(str(d / "final" / "model.safetensors")) for d in (full, cut))
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.slow
def test_two_processes_take_their_rounds_together(tiny_model_dir, tmp_path):
    """Each process fills its own share; a round is drawn while any process is short, by every process (a
    process that stopped early would leave the others waiting in a collective)."""
    import os
    import socket
    import subprocess
    import sys

    from tests.stages.test_rl import rl_args

    out = tmp_path / "two"
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(port),
           "-m", "t1", "rl", *rl_args(tiny_model_dir, out, "train.steps=2", "rollout.prompts_per_step=4",
                                      "algo.dynamic_sampling=true", "algo.dynamic_max_rounds=3"), "--quiet"]
    proc = subprocess.run(cmd, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True,
                          timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for m in rows(out / "metrics.jsonl"):
        assert 1 <= m["dynamic/rounds"] <= 3 and 0 <= m["dynamic/groups_filled"] <= 2  # per process: 2 groups
