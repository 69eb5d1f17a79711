"""Shared fixtures: a tiny model and tokenizer built locally (never downloaded)."""

from __future__ import annotations

from dataclasses import replace

import pytest

from t1.model.load import ModelConfig, build_model, build_tokenizer, save

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
