"""Shared fixtures: a tiny model and tokenizer built locally (never downloaded)."""

from __future__ import annotations

import pytest

from t1.models import ModelConfig, build_model, build_tokenizer, save

TINY = ModelConfig(hidden=32, layers=2, heads=2, kv_heads=2, ffn=64, max_positions=512)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """A 2-layer Llama and the Countdown tokenizer saved in HF format."""
    tok = build_tokenizer(100)
    model = build_model(TINY, tok)
    return save(model, tok, tmp_path_factory.mktemp("tiny") / "model")
