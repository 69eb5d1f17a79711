"""Rewards the user supplies (t1.rl.rewards): loading by import path, the calls bounded in time and checked,
and what `t1 rl` logs and trains on."""

import json
import textwrap

import pytest
import torch

from t1.config import ConfigError
from t1.rl.rewards import CORRECT, UserReward, load_function
from t1.stages.rl import train_rl
from tests.stages.test_rl import rl_cfg, rows

REWARDS = '''
import math, time

def length(prompt, response, row):
    return len(response.split()) / 10

def parts(prompt, response, row):
    return {"short": -len(response) / 100, "has_row": float(bool(row))}

def boom(prompt, response, row):
    raise ValueError("secret response text must not be printed")

def slow(prompt, response, row):
    time.sleep(30)
    return 1.0

def nan(prompt, response, row):
    return math.nan

def which(prompt, response, row):
    if "a" in response:
        raise KeyError("x")
    if "b" in response:
        time.sleep(30)
    if "c" in response:
        return {"unlisted": 1.0}
    if "d" in response:
        return "1.0"
    return 0.5
'''


@pytest.fixture
def module(tmp_path):
    path = tmp_path / "my_rewards.py"
    path.write_text(textwrap.dedent(REWARDS))
    return path


def test_bad_references_are_one_line_config_errors(tmp_path, module):
    (tmp_path / "broken.py").write_text("raise RuntimeError('at import')\n")
    for ref, msg in [("nocolon", "expected package.module:function"), ("a.b:", "expected"),
                     ("t1_no_such_module_x:f", "cannot import 't1_no_such_module_x'"),
                     (f"{tmp_path}/missing.py:f", "no such file"),
                     (f"{module}:absent", "has no function 'absent'"),
                     (f"{tmp_path}/broken.py:f", "RuntimeError: at import")]:
        with pytest.raises(ConfigError, match=msg) as e:
            load_function(ref)
        assert str(e.value).startswith("data.reward: ") and "\n" not in str(e.value)
    assert load_function("json:dumps") is json.dumps  # a module on the path, by its import name


def _score(module, name, responses, weights=None, timeout=5.0):
    reward = UserReward(f"{module}:{name}", weights or {}, timeout, workers=2)
    reward.start()
    try:
        n = len(responses)
        return reward(["p"] * n, responses, [{"id": i} for i in range(n)], torch.tensor([1.0, 0.0] * (n // 2)))
    finally:
        reward.close()


def test_a_float_reward_replaces_the_score_and_correct_stays_named(module):
    named = _score(module, "length", ["one two", "one two three four"])
    torch.testing.assert_close(named.values["length"], torch.tensor([0.2, 0.4]))
    torch.testing.assert_close(named.values[CORRECT], torch.tensor([1.0, 0.0]))
    torch.testing.assert_close(named.total, torch.tensor([0.2, 0.4]))  # correct: weight 0 unless listed
    assert named.n_failed == 0
    both = _score(module, "length", ["one two", "x"], {"length": 2.0, "correct": 0.5})
    torch.testing.assert_close(both.total, torch.tensor([2 * 0.2 + 0.5, 2 * 0.1]))


def test_named_rewards_are_weighted(module):
    named = _score(module, "parts", ["abcd", "ab"], {"short": 10.0, "has_row": 1.0})
    torch.testing.assert_close(named.values["short"], torch.tensor([-0.04, -0.02]))
    torch.testing.assert_close(named.values["has_row"], torch.tensor([1.0, 1.0]))  # the row reached it
    torch.testing.assert_close(named.total, torch.tensor([0.6, 0.8]))
    unnamed = _score(module, "parts", ["abcd", "ab"])  # a dict needs its names in data.reward_weights
    assert unnamed.n_failed == 2 and "not in data.reward_weights" in next(iter(unnamed.reasons))


def test_a_reward_that_raises_hangs_or_returns_garbage_costs_only_its_sample(module):
    named = _score(module, "which", ["a", "b", "c", "d", "e", "f"], timeout=1.0)
    assert named.n_failed == 4 and named.values["which"].tolist() == [0, 0, 0, 0, 0.5, 0.5]
    kinds = set(named.reasons)
    assert "KeyError" in kinds and "timeout" in kinds
    assert any("not in data.reward_weights" in k for k in kinds) and any("finite number" in k for k in kinds)
    assert _score(module, "nan", ["x", "y"]).n_failed == 2
    raised = _score(module, "boom", ["x", "y"])
    assert raised.n_failed == 2 and set(raised.reasons) == {"ValueError"}  # the type, never the message


def test_rl_trains_on_a_supplied_reward_and_logs_each_name(tiny_model_dir, tmp_path, module, capsys):
    out = tmp_path / "run"
    train_rl(rl_cfg(tiny_model_dir, out, "train.steps=2", f"data.reward={module}:length",
                    "penalties.truncated=false", "penalties.garbage=false", "penalties.repetitive=false"),
             progress=False)
    m = rows(out / "metrics.jsonl")
    assert len(m) == 2 and m[0]["rewards/failed"] == 0
    for key in ("rewards/length/mean", "rewards/length/std", "rewards/correct/mean", "rewards/correct/std"):
        assert key in m[0]
    for r in m:  # no penalty on: the reward trained on is the supplied one
        assert r["rewards/length/mean"] > 0 and r["reward"] == pytest.approx(r["rewards/length/mean"], abs=1e-6)
    boom = tmp_path / "boom"
    train_rl(rl_cfg(tiny_model_dir, boom, "train.steps=1", f"data.reward={module}:boom"), progress=False)
    [row] = rows(boom / "metrics.jsonl")
    assert row["rewards/failed"] == 1.0  # every call failed, the run went on
    err = capsys.readouterr().err
    assert "data.reward failed on 64 of 64 samples at step 1 (ValueError: 64)" in err and "secret" not in err
    with pytest.raises(ConfigError, match="data.reward: .* has no function 'nope'"):
        rl_cfg_run = rl_cfg(tiny_model_dir, tmp_path / "bad", f"data.reward={module}:nope")
        train_rl(rl_cfg_run, progress=False)
