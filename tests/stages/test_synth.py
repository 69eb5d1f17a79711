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
