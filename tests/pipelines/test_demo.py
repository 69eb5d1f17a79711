"""A smoke run of the whole demo with tiny settings: every stage runs and summary.json has every field."""

import json

import pytest

from t1.cli import main

TINY_DEMO = ["tiny.hidden=32", "tiny.layers=2", "tiny.heads=2", "tiny.kv_heads=2", "tiny.ffn=64",
             "sft_examples=400", "filter_prompts=16", "filter_samples=2", "rl_budget=32", "rl_steps=2",
             "rl_prompts=8", "rl_samples=4", "eval_problems=24", "budgets=[8,16,32,64]"]


@pytest.mark.slow
def test_demo_smoke(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", *TINY_DEMO, "--out", str(out), "--quiet"]) == 0
    s = json.loads((out / "summary.json").read_text())
    for key in ("sft_accuracy", "rl_accuracy", "direct_sft_accuracy", "scaling", "wall_seconds", "checks"):
        assert key in s
    for key in ("sft_accuracy", "rl_accuracy", "direct_sft_accuracy"):
        assert 0.0 <= s[key] <= 1.0
    assert set(s["scaling"]) >= {"sft", "rl"}
    assert [p["budget"] for p in s["scaling"]["rl"]] == [8, 16, 32, 64]
    assert all(0 <= p["accuracy"] <= 1 for p in s["scaling"]["sft"])
    for done in ("sft/final", "sft_direct/final", "filter/kept.jsonl", "rl/final", "eval/scaling.png",
                 "report.html"):
        assert (out / done).exists(), done
    assert "t1 demo" in capsys.readouterr().err
    # a second run finds every stage done and only re-summarises
    assert main(["demo", *TINY_DEMO, "--out", str(out), "--quiet"]) == 0
    assert "already done" in capsys.readouterr().err
