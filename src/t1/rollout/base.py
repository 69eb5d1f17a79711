"""The engine interface: sampling parameters, a sample, the Engine protocol, per-sample seeds, engine errors."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


class EngineError(RuntimeError):
    """A sampling engine failed in a way the run cannot continue past (a server died, an engine holds stale
    weights). The command line prints it as one line; the last checkpoint stays as it was."""


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
    """``generate`` is all a caller needs. Engines that sample from a copy of the weights (vLLM, servers) also
    have ``shares_weights = False``, ``push_weights(weights, version)`` taking (HF name, full tensor) pairs
    one at a time (see :mod:`t1.rollout.weights`), and ``generate(..., version=v)`` refusing to sample from
    other weights than version v. The fast and generate engines read the policy's own tensors
    (``shares_weights = True``): nothing to push."""

    def generate(self, prompts: list[list[int]], seeds: list[int], params: SamplingParams) -> list[Sample]: ...


def sample_seed(seed: int, step: int, prompt: int, k: int) -> int:
    """A distinct, reproducible seed for sample k of prompt ``prompt`` at ``step``."""
    x = (seed * 0x9E3779B1 + step) * 0x85EBCA77 + prompt * 0xC2B2AE3D + k
    return x % (1 << 62)
