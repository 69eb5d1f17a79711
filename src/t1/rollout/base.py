"""The engine interface: sampling parameters, a sample, the Engine protocol, per-sample seeds, engine errors."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol

from t1.config import require


class EngineError(RuntimeError):
    """A sampling engine failed in a way the run cannot continue past (a server died, an engine holds stale
    weights). The command line prints it as one line; the last checkpoint stays as it was."""


@dataclass(frozen=True)
class SamplingParams:
    """What every engine samples with. ``stop_ids``: the tokens that end a sample (the model's turn end and
    eos ids: :attr:`t1.chat.ChatFormat.stop_ids`); every engine stops at the first of them, keeps it as the
    sample's last token and drops anything after it. Empty: the tokenizer's eos alone."""

    temperature: float = 1.0
    top_p: float = 1.0
    max_new_tokens: int = 128
    stop_ids: tuple[int, ...] = ()

    def __post_init__(self):
        check_sampling(1, self.temperature, self.top_p, self.max_new_tokens)

    def stops(self, eos: int) -> tuple[int, ...]:
        """The ids that end a sample: ``stop_ids``, or ``(eos,)`` when none are given."""
        return self.stop_ids or (eos,)


def check_sampling(n: int, temperature: float, top_p: float, max_new_tokens: int | None = None) -> None:
    """The one check of the sampling settings (every config that has them calls it, and every
    :class:`SamplingParams`): refused with the option's name when out of range."""
    require(n >= 1, "n", "must be ≥ 1 (samples per problem)", n)
    require(math.isfinite(temperature) and temperature >= 0, "temperature", "must be ≥ 0", temperature)
    require(math.isfinite(top_p) and 0 < top_p <= 1, "top_p", "must be in (0, 1]", top_p)
    if max_new_tokens is not None:
        require(max_new_tokens >= 1, "max_new_tokens", "must be ≥ 1", max_new_tokens)


@dataclass
class Sample:
    token_ids: list[int]  # generated tokens, including the final stop token when finished
    text: str  # decoded, without special tokens
    finished: bool  # ended with a stop token within the budget
    logprobs: list[float] | None = None  # log-probs of token_ids under the sampling distribution


def finish(token_ids: list[int], logprobs: list[float] | None, ended: bool, stops: tuple[int, ...]
           ) -> tuple[list[int], list[float] | None, bool]:
    """A server's or engine's raw output made consistent with ``stops``: cut after the first stop id (anything
    a server sent past it is not the model's turn); a sample that ``ended`` by itself without one (a stop string,
    an eos the engine knew but t1 did not) gets ``stops[0]`` appended so training learns to stop there, with
    log-prob 0 (that token was not sampled; 0 keeps the sample's other log-probs usable for the mismatch
    measure and the IS correction, which skip a micro-batch holding a sample without any). Returns (ids,
    log-probs, finished)."""
    stop_set = set(stops)
    cut = next((i for i, t in enumerate(token_ids) if t in stop_set), None)
    if cut is not None:
        return list(token_ids[: cut + 1]), None if logprobs is None else list(logprobs[: cut + 1]), True
    if ended:
        return list(token_ids) + [stops[0]], None if logprobs is None else list(logprobs) + [0.0], True
    return list(token_ids), logprobs, False


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
