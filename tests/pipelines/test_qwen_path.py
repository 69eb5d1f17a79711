"""The Qwen2.5 path end to end on Qwen2.5's real tokenizer and tiny Qwen2 models: RL from a chat-template SFT model
scores well-formed replies without penalties (the silent −1 of issue 23), a mismatched format is reported in
one line, and the whole pipeline — synth → sft → filter → rl → eval → scale — runs on it."""

from __future__ import annotations

import json

import pytest

from t1 import config as C
from t1.rl.config import RLConfig
from t1.stages.rl import train_rl
from tests.fake_server import FakeServer
from tests.real_model import arithmetic_rows

IM_START, IM_END, EOT = 151644, 151645, 151643


def rows(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture(scope="module")
def prompts(tmp_path_factory):
    path = tmp_path_factory.mktemp("qwen_rl") / "prompts.jsonl"
    path.write_text("".join(json.dumps({"problem": r["problem"], "answer": r["answer"]}) + "\n"
                            for r in arithmetic_rows(16, seed=3)))
    return path


def rl_args(model, out, data, *extra):
    return [f"model={model}", f"out={out}", "data.task=math", "data.source=jsonl", f"data.paths=[{data}]",
            "rollout.engine=fast", "rollout.prompts_per_step=4", "rollout.samples_per_prompt=4",
            "rollout.max_new_tokens=40", "rollout.temperature=1.0", "train.optim.lr=1e-4",
            "train.optim.warmup_steps=0", "train.steps=3", "train.rollouts_every=1", "train.rollouts_kept=16",
            *extra]


def test_rl_from_a_chat_template_sft_model_has_no_garbage_and_a_reward_signal(qwen_sft_dir, prompts, tmp_path,
                                                                               capsys):
    out = tmp_path / "rl"
    history = train_rl(C.load(RLConfig, None, rl_args(qwen_sft_dir, out, prompts)), progress=False)
    err = capsys.readouterr().err
    assert "sampling stops at [151645 <|im_end|>, 151643 <|endoftext|>]" in err and "warning" not in err
    assert all(h["penalty_garbage"] == 0 for h in history), [h["penalty_garbage"] for h in history]
    assert max(h["accuracy"] for h in history) > 0 and max(h["reward_group_std"] for h in history) > 0
    shown = rows(out / "rollouts.jsonl")
    finished = [r for r in shown if r["finished"]]
    assert len(finished) >= len(shown) // 2
    assert all(r["last_token_ids"][-1] == IM_END and r["penalty_reason"] == "" for r in finished)
    assert any(r["correct"] and r["reward"] > 0 for r in shown)  # a correct \boxed{} earns its +1
    cut = [r for r in shown if not r["finished"]]
    assert all(r["penalty_reason"].startswith("truncated: no stop token in 40 tokens") for r in cut)
    import pyarrow.parquet as pq

    table = pq.read_table(out / "completions" / "step_00001.parquet").to_pylist()
    assert len(table) == 16 and {"penalty_reason", "last_token_ids"} <= set(table[0])


def test_a_model_that_never_ends_its_turn_is_one_warning_line(qwen_model_dir, prompts, tmp_path, capsys):
    """The random base model never writes a stop token within the budget: every sample is truncated, and `t1 rl`
    says so in one line with the rule, the last token ids and the chat format in use."""
    out = tmp_path / "rl"
    history = train_rl(C.load(RLConfig, None, rl_args(qwen_model_dir, out, prompts, "train.steps=2")),
                       progress=False)
    err = capsys.readouterr().err
    assert history[0]["penalty_truncated"] > 0.5
    lines = [line for line in err.splitlines() if "warning: the truncated penalty fired on" in line]
    assert len(lines) == 1 and "e.g. truncated: no stop token in 40 tokens (last ids [" in lines[0]
    assert "sampling stops at [151645 <|im_end|>, 151643 <|endoftext|>]" in lines[0]


def synth_reply(payload):
    """A scripted teacher, critic and writer: every reply is the right worked answer to the sum it is about."""
    import re

    a, b = map(int, re.search(r"(\d+) \+ (\d+)", payload["messages"][-1]["content"]).groups())
    reply = f"{a} + {b} = {a + b}. The answer is \\boxed{{{a + b}}}."
    return {"choices": [{"message": {"role": "assistant", "content": reply}, "finish_reason": "stop"}]}


@pytest.mark.slow
def test_the_whole_pipeline_on_qwens_tokenizer(qwen_model_dir, prompts, tmp_path, capsys):
    """t1 synth (a local scripted server) → t1 sft (chat template) → t1 filter → t1 rl (math) → t1 eval →
    t1 scale, each through the CLI on a tiny Qwen2 with Qwen2.5's tokenizer; every stage prints the format."""
    from t1.cli import main

    problems = tmp_path / "problems.jsonl"
    problems.write_text("".join(json.dumps({"problem": r["problem"], "answer": r["answer"]}) + "\n"
                                for r in arithmetic_rows(16, seed=5)))
    with FakeServer(synth_reply) as server:
        synth = tmp_path / "synth.yaml"
        synth.write_text(f"inputs: [{problems}]\nout: {tmp_path / 'sft.jsonl'}\nteachers:\n"
                         f"  - {{base_url: '{server.url}', model: t}}\ncritic: {{base_url: '{server.url}', "
                         f"model: c}}\nwriter: {{base_url: '{server.url}', model: w}}\n")
        assert main(["synth", str(synth)]) == 0
    sft_data = rows(tmp_path / "sft.jsonl")
    assert sft_data and all("\\boxed{" in r["response"] for r in sft_data)
    sft = tmp_path / "sft"
    assert main(["sft", f"model={qwen_model_dir}", f"out={sft}", "data.source=jsonl",
                 f"data.paths=[{tmp_path / 'sft.jsonl'}]", "train.epochs=3", "train.batch_size=8",
                 "train.optim.lr=5e-3"]) == 0
    assert json.loads((sft / "final" / "generation_config.json").read_text())["eos_token_id"] == [IM_END, EOT]
    assert main(["filter", f"model={sft / 'final'}", f"out={tmp_path / 'filter'}", "data.task=math",
                 "data.source=jsonl", f"data.paths=[{prompts}]", "samples=2", "max_new_tokens=24",
                 "min_pass=0", "include_min=true", "max_pass=1"]) == 0
    kept = tmp_path / "filter" / "kept.jsonl"
    rl = tmp_path / "rl"
    assert main(["rl", *rl_args(sft / "final", rl, kept, "train.steps=2")]) == 0
    for engine in ("fast", "generate"):
        assert main(["eval", f"model={rl / 'final'}", f"bench=[{prompts}]", "max_new_tokens=24", "n=2",
                     f"rollout.engine={engine}", f"out={tmp_path / 'eval' / engine}"]) == 0
        samples = rows(tmp_path / "eval" / engine / "prompts.samples.jsonl")
        assert len(samples) == 32 and all("<|im_end|>" not in s["response"] for s in samples)
    assert main(["scale", f"models=[{sft / 'final'},{rl / 'final'}]", f"bench={prompts}", "budgets=[8,24]",
                 f"out={tmp_path / 'scale'}", "extend=Wait", "max_extensions=1"]) == 0
    curves = json.loads((tmp_path / "scale" / "scaling.json").read_text())["curves"]
    assert len(curves) == 2 and all(len(c) == 2 for c in curves.values())
    err = capsys.readouterr().err
    for stage in ("sft", "filter", "rl", "eval", "scale"):
        assert any(line.startswith(f"{stage}:") and "sampling stops at [151645 <|im_end|>" in line
                   for line in err.splitlines()), stage


@pytest.mark.slow
def test_rl_through_vllm_on_qwens_tokenizer(qwen_sft_dir, prompts, tmp_path):
    """`t1 rl rollout.engine=vllm` (vLLM's CPU build, weights pushed every step) from the chat-template SFT model:
    vLLM stops at <|im_end|> too, keeps its log-prob, and no well-formed reply is penalised."""
    pytest.importorskip("vllm")
    out = tmp_path / "rl"
    history = train_rl(C.load(RLConfig, None, rl_args(qwen_sft_dir, out, prompts, "rollout.engine=vllm",
                                                      "rollout.vllm.dtype=float32", "train.precision=fp32",
                                                      "train.steps=2")), progress=False)
    assert all(h["penalty_garbage"] == 0 for h in history)
    assert all(h["sampling/logp_diff_max"] < 1e-2 for h in history), [h["sampling/logp_diff_max"] for h in history]
    finished = [r for r in rows(out / "rollouts.jsonl") if r["finished"]]
    assert finished and all(r["last_token_ids"][-1] == IM_END and r["penalty_reason"] == "" for r in finished)
