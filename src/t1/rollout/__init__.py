"""Sampling engines behind one small interface.

``engine.generate(prompts, seeds, params) -> list[Sample]``: one sample per prompt (repeat a prompt K times
for K samples), each with its own seed, so a sample depends only on its prompt, seed and the weights — not
on which other prompts share its batch or process.

Engines: :class:`t1.rollout.fast.FastEngine` (transformers weights, our decode loop; CPU and single GPU),
:class:`t1.rollout.hf_generate.GenerateEngine` (plain ``model.generate``, any architecture), and
:class:`t1.rollout.openai.OpenAIEngine` (an OpenAI-compatible server: SGLang, vLLM).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True)
class SamplingParams:
    temperature: float = 1.0
    top_p: float = 1.0
    max_new_tokens: int = 128


@dataclass
class Sample:
    token_ids: list[int]  # generated tokens, including the final end-of-sequence token when finished
    text: str  # decoded, without special tokens
    finished: bool  # ended with end-of-sequence within the budget
    logprobs: list[float] | None = None  # log-probs of token_ids under the sampling distribution


class Engine(Protocol):
    def generate(self, prompts: list[list[int]], seeds: list[int], params: SamplingParams) -> list[Sample]: ...


def make_engine(kind: str, model, tokenizer, **kwargs) -> Engine:
    """"fast" (falls back to "generate" for architectures it does not know), "generate" or "openai"."""
    if kind == "fast":
        from t1.rollout.fast import FastEngine, supports

        if supports(model):
            return FastEngine(model, tokenizer, **kwargs)
        kind = "generate"
    if kind == "generate":
        from t1.rollout.hf_generate import GenerateEngine

        return GenerateEngine(model, tokenizer)
    if kind == "openai":
        from t1.rollout.openai import OpenAIEngine

        return OpenAIEngine(tokenizer=tokenizer, **kwargs)
    raise ValueError(f"unknown engine {kind!r}: use fast, generate or openai")
