"""Rewards the user supplies (t1.rl.rewards): loading by import path, the calls bounded in time and checked,
and what `t1 rl` logs and trains on."""

import json
import textwrap
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import torch

from t1.config import ConfigError
from t1.rl.rewards import CORRECT, UserReward, judge_verdict, load_function, render, source
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

def numpyish(prompt, response, row):
    import numpy, torch
    return {"a": numpy.float32(0.5), "b": torch.tensor([2.0]), "c": numpy.int64(3)}

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
    for ref, msg in [("nocolon", "expected package.module:name"), ("a.b:", "expected"),
                     ("t1_no_such_module_x:f", "cannot import 't1_no_such_module_x'"),
                     (f"{tmp_path}/missing.py:f", "no such file"),
                     (f"{module}:absent", "has no 'absent'"),
                     (f"{tmp_path}/broken.py:f", "RuntimeError: at import")]:
        with pytest.raises(ConfigError, match=msg) as e:
            load_function(ref)
        assert str(e.value).startswith("data.reward: ") and "\n" not in str(e.value)
    assert load_function("json:dumps") is json.dumps  # a module on the path, by its import name


def _score(module, name, responses, weights=None, timeout=5.0):
    reward = UserReward(load_function(f"{module}:{name}"), weights or {}, timeout, workers=2)
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
    ok = _score(module, "numpyish", ["x", "y"], {"a": 1.0, "b": 1.0, "c": 1.0})  # numpy and torch scalars
    assert ok.n_failed == 0 and ok.total.tolist() == [5.5, 5.5]
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
    with pytest.raises(ConfigError, match="data.reward: .* has no 'nope'"):
        rl_cfg_run = rl_cfg(tiny_model_dir, tmp_path / "bad", f"data.reward={module}:nope")
        train_rl(rl_cfg_run, progress=False)


class _Handler(BaseHTTPRequestHandler):
    seen: list = []

    def log_message(self, *args):
        pass

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        _Handler.seen.append((self.path, self.headers.get("Authorization"), body))
        if self.path == "/reward":
            response = body["response"]
            reply = ({"reward": len(response) / 10} if response != "slow" else time.sleep(5) or {})
            reply = reply if response != "named" else {"rewards": {"a": 1.0, "b": 2.0}}
            reply = reply if response != "nokey" else {"score": 1}
        else:  # an OpenAI-compatible judge
            text = body["messages"][0]["content"]
            verdict = "YES." if "right" in text else "no" if "wrong" in text else "maybe"
            reply = {"choices": [{"message": {"role": "assistant", "content": verdict}}]}
        data = json.dumps(reply).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


@pytest.fixture
def server():
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    _Handler.seen.clear()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


def _data(**kw):
    from t1 import config as C
    from t1.data.prompts import PromptDataConfig

    return C.from_dict(PromptDataConfig, {"reward_timeout": 2.0, **kw})


def _run(fn, weights, responses, rows=None):
    reward = UserReward(fn, weights, 2.0, workers=2)
    reward.start()
    try:
        n = len(responses)
        return reward(["p"] * n, responses, rows or [{"answer": "7"}] * n, torch.zeros(n))
    finally:
        reward.close()


def test_a_reward_server_bounded_in_time_and_checked(server, monkeypatch):
    monkeypatch.setenv("T1_REWARD_API_KEY", "sk-secret")
    fn = source(f"{server}/reward", _data())
    named = _run(fn, {}, ["abcd", "slow", "nokey", "ab"])
    assert named.values["server"].tolist() == pytest.approx([0.4, 0, 0, 0.2])
    assert named.n_failed == 2 and named.reasons["timeout"] == 1
    assert all(auth == "Bearer sk-secret" for _, auth, _ in _Handler.seen)
    assert {"prompt", "response", "row"} <= set(_Handler.seen[0][2])
    both = _run(fn, {"a": 1.0, "b": 0.5}, ["named"])
    assert both.total.tolist() == [2.0]


def test_an_llm_judge_says_yes_or_no(server):
    with pytest.raises(ConfigError, match="data.judge.model: is required"):
        source(f"judge:{server}/v1", _data())
    with pytest.raises(ConfigError, match="needs a server address"):
        source("judge:localhost", _data(judge={"model": "m"}))
    fn = source(f"judge:{server}/v1", _data(judge={"model": "judge-7b", "template": "{response} vs {answer}"}))
    named = _run(fn, {}, ["right", "wrong", "unsure"])
    assert named.values["judge"].tolist() == [1.0, 0.0, 0.0] and named.n_failed == 1
    path, _, body = _Handler.seen[0]
    assert path == "/v1/chat/completions" and body["model"] == "judge-7b" and body["temperature"] == 0.0


def test_the_judge_prompt_is_filled_once_and_verdicts_are_strict():
    # a response that writes {answer} does not get the gold answer shown back to the judge
    assert render("{prompt} | {response} | {answer}", "P {response}", "R {answer}", "42") == \
        "P {response} | R {answer} | 42"
    assert [judge_verdict(t) for t in ("YES", "yes, because", "No.", "0.25", " 1 ")] == [1, 1, 0, 0.25, 1]
    for bad in ("", "maybe", "1.5", "-0.1", "nan"):
        with pytest.raises(ValueError):
            judge_verdict(bad)
