"""Counts and budgets a user sets are bounded before any work (issue "Hardening, round 2"): a hard cap from
t1.rollout.base, the model's context and this machine's memory (t1.rollout.bounds), the prompts the data holds
(t1.data.prompts.check_enough). Each case is refused in one line naming the field, the value and the limit.

"Before any work" is enforced, not hoped for: loading weights and sampling raise here, so a case that got past
its check fails at once instead of running for hours (``n=100000000`` ran without bound before)."""

from __future__ import annotations

import json
import shutil
import time

import pytest

from t1.config import ConfigError
from t1.rollout import bounds

EVAL = ("eval", "model={model}", "bench=[countdown]", "out={tmp}/eval", "--quiet")
SCALE = ("scale", "models=[{model}]", "bench=countdown", "out={tmp}/scale", "--quiet")
FILTER = ("filter", "model={model}", "out={tmp}/filter", "data.num_prompts=4", "--quiet")
RL = ("rl", "model={model}", "out={tmp}/rl", "rollout.prompts_per_step=2", "rollout.samples_per_prompt=2",
      "data.num_prompts=8", "--quiet")
SYNTH = ("synth", "inputs=[{tmp}/problems.jsonl]", "out={tmp}/synth/sft.jsonl")

ROWS = [  # (argv, exit code, needles of the one error line)
    (EVAL + ("n=100000000",), 2, ("n: must be ≤ 65,536 samples per problem", "100000000")),
    (EVAL + ("max_new_tokens=100000000",), 2, ("max_new_tokens: must be ≤ 1,048,576 tokens", "100000000")),
    (EVAL + ("n=1000",), 2, ("batch_problems: 256 × 1,000 = 256,000 sequences", "65,536", "≤ 65")),
    (EVAL + ("max_new_tokens=512",), 2, ("max_new_tokens: 512 leaves no room for a prompt in the 512 tokens",
                                         "max_position_embeddings")),
    (EVAL + ("rollout.openai.timeout=1e9",), 2, ("rollout.openai.timeout:", "86400")),
    (EVAL + ("rollout.openai.concurrency=100000",), 2, ("rollout.openai.concurrency:", "1024")),
    (SCALE + ("budgets=[16,100000000]",), 2, ("budgets: must be ≤ 1,048,576 tokens", "100000000")),
    (SCALE + ("n=100000000",), 2, ("n: must be ≤ 65,536", "100000000")),
    (SCALE + ("answer_tokens=100000000",), 2, ("answer_tokens: must be ≤ 1,048,576",)),
    (SCALE + ("budgets=[16,600]",), 2, ("budgets (+ answer_tokens 24): 624 leaves no room", "512 tokens")),
    (RL + ("rollout.max_new_tokens=512",), 2, ("rollout.max_new_tokens: 512 leaves no room", "512 tokens")),
    (SCALE + ("n=1000",), 2, ("n: ", "000 sequences in one engine call (problems × samples", "65,536")),
    (FILTER + ("max_new_tokens=100000000",), 2, ("max_new_tokens: must be ≤ 1,048,576", "100000000")),
    (FILTER + ("samples=100000000",), 2, ("samples: must be ≤ 65,536", "100000000")),
    (FILTER + ("samples=1024", "prompts_per_batch=1024"), 2, ("prompts_per_batch: 1,024 × 1,024",)),
    (FILTER + ("data.num_prompts=100000000",), 2, ("data.num_prompts:", "1,048,576")),
    (RL + ("rollout.max_new_tokens=100000000",), 2, ("rollout.max_new_tokens: must be ≤ 1,048,576",)),
    (RL + ("rollout.samples_per_prompt=100000000",), 2, ("rollout.samples_per_prompt: must be ≤ 65,536",)),
    (RL + ("rollout.prompts_per_step=8", "data.num_prompts=2"), 2,
     ("rollout.prompts_per_step: 8 is more than the 2 prompts in data (data.num_prompts)",)),
    (RL + ("rollout.prompts_per_step=1024", "rollout.samples_per_prompt=128", "data.num_prompts=4096"), 2,
     ("rollout.prompts_per_step: 1,024 × 128 = 131,072 sequences", "65,536")),
    (RL + ("data.exclude_heldout=100000000",), 2, ("data.exclude_heldout:", "1,048,576")),
    (RL + ("rollout.vllm_server.max_retries=100000000",), 2, ("rollout.vllm_server.max_retries:", "100")),
    (SYNTH + ("critic.max_tokens=100000000",), 2, ("critic.max_tokens: must be ≤ 1,048,576",)),
    (SYNTH + ("attempts_per_teacher=100000000",), 2, ("attempts_per_teacher: must be ≥ 1 and ≤ 64",)),
]


@pytest.fixture
def no_work(monkeypatch):
    """Loading weights or sampling fails the test: every refusal here must come first."""
    from t1.model import load
    from t1.rollout.fast import FastEngine

    def work(*args, **kwargs):
        raise AssertionError("work started before the refusal")

    monkeypatch.setattr(load, "load", work)
    monkeypatch.setattr(FastEngine, "generate", work)


def argv(row, model, tmp):
    return [a.format(model=model, tmp=tmp) for a in row]


IDS = [" ".join((r[0], *(a for a in r[1:] if "=" in a and "{" not in a))) for r, _, _ in ROWS]


@pytest.mark.parametrize("row, code, needles", ROWS, ids=IDS)
def test_counts_and_budgets_are_refused_before_any_work(t1, no_work, tiny_model_dir, tmp_path, row, code, needles):
    (tmp_path / "problems.jsonl").write_text('{"problem": "1 + 1?", "answer": "2"}\n')
    start = time.monotonic()
    out = t1(*argv(row, tiny_model_dir, tmp_path))
    assert out.code == code, out.err[-2000:]
    out.one_line(*needles)
    assert time.monotonic() - start < 30  # refused up front (a generous bound on a loaded 2-core machine)


def test_rl_refuses_a_longest_prompt_plus_budget_past_the_context_before_sampling(t1, tiny_model_dir, tmp_path,
                                                                                 monkeypatch):
    """`t1 rl` knows its prompts once loaded: 505 new tokens fit the tiny model's 512, with the longest prompt
    they do not."""
    from t1.rollout.fast import FastEngine

    monkeypatch.setattr(FastEngine, "generate", lambda *a, **k: pytest.fail("sampled past the context"))
    out = t1(*argv(RL + ("rollout.max_new_tokens=505",), tiny_model_dir, tmp_path))
    assert out.code == 2
    line = out.one_line("rollout.max_new_tokens: 505 + the longest prompt (", "is more than the 512 of the "
                        "model's context (max_position_embeddings)")
    assert int(line.split("= ")[1].split(" ")[0].replace(",", "")) > 512


@pytest.fixture
def long_context_model(tiny_model_dir, tmp_path):
    """The tiny model claiming a 2M-token context: only memory bounds its budget."""
    path = tmp_path / "long"
    shutil.copytree(tiny_model_dir, path)
    config = json.loads((path / "config.json").read_text())
    (path / "config.json").write_text(json.dumps({**config, "max_position_embeddings": 1 << 21}))
    return path


def test_a_kv_cache_past_this_machines_memory_is_refused_before_loading(t1, no_work, long_context_model, tmp_path,
                                                                        monkeypatch):
    """256 sequences × 1M tokens × (2 layers × 2 × 32 KV values × 2 bytes + 33) ≈ 69 GiB: more than the 8 GiB
    this (patched) machine has."""
    monkeypatch.setattr(bounds, "available_memory", lambda: 8 << 30)
    out = t1(*argv(EVAL + ("max_new_tokens=1000000",), long_context_model, tmp_path))
    assert out.code == 2
    out.one_line("max_new_tokens: the fast engine needs at least", "GiB of KV cache for 256 sequences × 1,000,000 "
                 "tokens, more than the 8.0 GiB", "lower max_new_tokens or rollout.max_batch")


def test_the_memory_bound_counts_weights_and_the_batch_actually_decoded():
    """Weights count until loaded; the batch is min(max_batch, sequences); a config the estimate does not know
    is left alone; a budget that fits passes."""
    from transformers import LlamaConfig

    from t1.rollout.config import EngineConfig

    c = LlamaConfig(hidden_size=4096, num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=8,
                    intermediate_size=14336, vocab_size=128256, max_position_embeddings=131072)
    fast = EngineConfig(engine="fast", max_batch=8)
    bounds.check_host_memory(fast, "fast", c, 1024, 8, available=64 << 30)  # 32 GiB weights + 1 GiB KV
    with pytest.raises(ConfigError, match=r"needs at least 29.\d GiB of fp32 weights \+ 1.0 GiB of KV cache for "
                                          r"8 sequences × 1,024 tokens, more than the 16.0 GiB"):
        bounds.check_host_memory(fast, "fast", c, 1024, 64, available=16 << 30)
    bounds.check_host_memory(fast, "fast", c, 1024, 64, loaded=True, available=16 << 30)
    bounds.check_host_memory(fast, "fast", object(), 10 ** 6, 64, available=1)  # unknown shape: not checked
    assert bounds.available_memory() is None or bounds.available_memory() > 0


def test_rl_on_a_prompt_file_with_fewer_prompts_than_a_step_is_refused_before_loading(t1, no_work, tiny_model_dir,
                                                                                     tmp_path):
    """Two prompts in the file, eight per step: each would be drawn four times a step without a word."""
    rows = [{"problem": "1 + 1?", "answer": "2"}, {"problem": "2 + 2?", "answer": "4"}]
    (tmp_path / "two.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = t1(*argv(RL + ("data.source=jsonl", "data.task=math", "data.paths=[{tmp}/two.jsonl]",
                         "rollout.prompts_per_step=8"), tiny_model_dir, tmp_path))
    assert out.code == 2, out.err[-2000:]
    out.one_line("rollout.prompts_per_step: 8 is more than the 2 prompts in data (", "two.jsonl")


def test_a_prompt_file_with_fewer_prompts_than_a_step_is_refused():
    """data.num_prompts bounds generated prompts in the config; files are counted once read."""
    from t1.data.prompts import check_enough

    check_enough(8, 8, "rollout.prompts_per_step", "a.jsonl")
    with pytest.raises(ConfigError, match=r"^rollout.prompts_per_step: 8 is more than the 2 prompts in data "
                                          r"\(a.jsonl\): lower rollout.prompts_per_step to ≤ 2"):
        check_enough(2, 8, "rollout.prompts_per_step", "a.jsonl")
