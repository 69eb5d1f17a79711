"""`t1 synth` end to end against a real local HTTP server speaking chat completions from scripted replies."""

import json

import pytest

from t1 import config as C
from t1.cli import main
from t1.stages.synth import SynthConfig, run_synth
from tests.fake_server import FakeServer

PROBLEMS = [{"id": f"p{i}", "problem": f"What is {i} + {i}?", "answer": str(2 * i)} for i in range(1, 5)]


def chat(payload):
    """Teachers: problem 1 and 2 right on the first sample, wrong on the second; problem 3 always wrong, and the
    writer forgets to reflect on it; problem 4: the writer boxes a wrong final answer."""
    text = payload["messages"][0]["content"]
    n = int(text.split("What is ")[1].split(" ")[0]) if "What is " in text else 0
    if text.startswith("Solve the following"):
        right = n in (1, 2) and payload["seed"] % 1000 == 0
        reply = f"{n} + {n} = {2 * n if right else 2 * n + 1}, so \\boxed{{{2 * n if right else 2 * n + 1}}}"
    elif text.startswith("Here is a problem"):
        reply = "The addition in the last step is off by one." if "incorrect" in text else "Checked: correct."
    elif text.startswith("Write one solution"):
        answer = 2 * n if n != 4 else 99
        reflect = "" if n == 3 else " Wait, that is a mistake: the sum is wrong. Let me redo it."
        reply = f"First I got {2 * n + 1}.{reflect} So the answer is \\boxed{{{answer}}}. Check: {n}+{n}={2 * n}."
    else:  # rewrite: keep the merged solution, which follows "solution ... voice" instructions
        reply = text.split("self-verification, but remove any mention of students, graders, critiques or "
                           "\"attempt 1/2\".\n\n")[1]
    return {"choices": [{"message": {"role": "assistant", "content": reply}, "finish_reason": "stop"}]}


def cfg_for(url, tmp_path, **extra):
    ep = {"base_url": url, "model": "m", "max_tokens": 64}
    data = {"inputs": [str(tmp_path / "problems.jsonl")], "out": str(tmp_path / "sft.jsonl"), "teachers": [ep],
            "critic": ep, "writer": ep, "concurrency": 2, "max_retries": 3, "timeout": 0.5, **extra}
    return C.from_dict(SynthConfig, data)


@pytest.fixture
def problems(tmp_path):
    (tmp_path / "problems.jsonl").write_text("".join(json.dumps(p) + "\n" for p in PROBLEMS))


def test_synth_end_to_end_with_429_timeout_and_malformed_reply(tmp_path, problems):
    script = [("status", 429), ("sleep", 1.2), ("garbage", b'{"choices": []}'), ("garbage", b"not json")]
    with FakeServer(chat, script=script) as server:
        report = run_synth(cfg_for(server.url, tmp_path), progress=False)
    rows = [json.loads(line) for line in (tmp_path / "sft.jsonl").read_text().splitlines()]
    assert [r["id"] for r in rows] == ["p1", "p2"]
    assert all("\\boxed{" in r["response"] and "Wait" in r["response"] for r in rows)
    assert rows[0]["wrong_attempts"] == 1 and rows[0]["prompt"] == "What is 1 + 1?"
    assert report["kept"] == 2
    assert report["rejected"] == {"no reflection despite a wrong attempt": 1, "final answer wrong": 1}
    # 4 problems × (2 attempts + 2 critiques + merge + rewrite) = 24 requests; for p3 and p4 both attempts
    # are the same text, so their two critique requests are identical and made once: 22 calls, none lost
    assert report["calls_made"] == 22
    # the output trains directly
    from t1.data.sft import DataStats, SFTDataConfig, read_pairs
    pairs = read_pairs(C.from_dict(SFTDataConfig, {"source": "jsonl", "paths": [str(tmp_path / "sft.jsonl")]}),
                       DataStats())
    assert len(pairs) == 2


def test_interrupted_run_resumes_without_repeated_calls(tmp_path, problems):
    with FakeServer(chat) as server:
        first = run_synth(cfg_for(server.url, tmp_path, limit=2), progress=False)  # "interrupted" after 2
        after_first = len(server.requests)
        second = run_synth(cfg_for(server.url, tmp_path), progress=False)
        assert first["calls_made"] == 12 and after_first == 12
        assert second["calls_made"] == 10  # p3 and p4 only (see the first test for why 10, not 12)
        assert len(server.requests) == 22  # every distinct call paid for exactly once
        third = run_synth(cfg_for(server.url, tmp_path), progress=False)
        assert third["calls_made"] == 0 and len(server.requests) == 22


def test_dry_run_prints_prompts_and_calls_nothing(tmp_path, problems, capsys):
    with FakeServer(chat) as server:
        assert main(["synth", f"inputs=[{tmp_path / 'problems.jsonl'}]", f"teachers=[{{base_url: {server.url}}}]",
                     "--dry-run"]) == 0
        assert server.requests == []
    out = capsys.readouterr().out
    for name in ("attempt", "critique", "merge", "rewrite"):
        assert f"──── {name} prompt (p1)" in out
    assert "What is 1 + 1?" in out


def test_lone_surrogates_in_replies_are_written_and_cached_sanely(tmp_path, problems):
    """A reply holding "\\ud800" (valid JSON, not valid Unicode) is cleaned where it enters: the output and the
    cache are written, and reruns work — from this cache, and from an old one that holds the surrogates."""
    def surrogate_chat(payload):
        reply = chat(payload)
        reply["choices"][0]["message"]["content"] += " \ud800"
        return reply

    cache = tmp_path / "sft.cache.jsonl"
    with FakeServer(surrogate_chat) as server:
        first = run_synth(cfg_for(server.url, tmp_path), progress=False)
        out = (tmp_path / "sft.jsonl").read_text(encoding="utf-8")
        assert first["kept"] == 2 and "\ufffd" in out
        lines = cache.read_text(encoding="ascii").splitlines()
        assert all("\\ud800" not in line for line in lines) and "\\ufffd" in lines[0]
        assert run_synth(cfg_for(server.url, tmp_path), progress=False)["calls_made"] == 0
        # a cache from before replies were cleaned, its last record torn by a kill
        old = [line.replace("\\ufffd", "\\ud800") for line in lines]
        cache.write_text("\n".join(old[:-1]) + "\n" + old[-1][:-20], encoding="ascii")
        again = run_synth(cfg_for(server.url, tmp_path), progress=False)
        assert again["calls_made"] == 1 and again["kept"] == 2  # only the torn record is paid for again
        assert (tmp_path / "sft.jsonl").read_text(encoding="utf-8") == out
        assert run_synth(cfg_for(server.url, tmp_path), progress=False)["calls_made"] == 0  # appended sanely


def test_output_over_an_input_and_bad_settings_are_one_line_errors(tmp_path, problems, capsys):
    inputs = tmp_path / "problems.jsonl"
    before = inputs.read_text()
    with FakeServer(chat) as server:
        base = ["synth", f"inputs=[{inputs}]", f"teachers=[{{base_url: {server.url}}}]"]
        for args, message in (([f"out={inputs}"], f"output {inputs}: is also an input"),
                              ([f"cache={inputs}"], f"cache {inputs}: is also an input"),
                              (["concurrency=0"], "concurrency: must be ≥ 1"),
                              (["max_retries=-1"], "max_retries: must be ≥ 0"),
                              (["timeout=0"], "timeout: must be a finite number of seconds > 0"),
                              (["grader_timeout=-1"], "grader_timeout: must be a finite number of seconds > 0"),
                              (["critic={base_url: localhost}"], "critic.base_url: must be an http")):
            assert main(base + [f"out={tmp_path / 'sft.jsonl'}"] + args) == 2, args
            err = capsys.readouterr().err
            assert err.startswith(f"t1 synth: error: {message}") and err.count("\n") == 1, err
        assert server.requests == []
    assert inputs.read_text() == before
