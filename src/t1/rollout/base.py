"""The engine interface: sampling parameters, a sample, the Engine protocol, per-sample seeds, engine errors,
and the hard caps on what a user may ask of an engine (:data:`MAX_NEW_TOKENS`, :data:`MAX_SAMPLES`,
:data:`MAX_SEQUENCES`), checked by every config before any work. Bounds that depend on the model (its context)
and on the machine (its memory) are :mod:`t1.rollout.bounds`'s."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol

from t1.config import ConfigError, require

# Hard caps, whatever the model and machine: values past them are typing mistakes (n=100000000), not plans,
# and would run without bound or allocate without limit before failing far from their cause.
MAX_NEW_TOKENS = 1 << 20  # 1,048,576 new tokens per sample: the longest context of released models (1M)
MAX_SAMPLES = 1 << 16  # 65,536 samples per prompt: pass@k is reported up to k = 128, majority vote needs tens;
# a problem's samples must fit one engine call (MAX_SEQUENCES) and each is a row of the samples file
MAX_SEQUENCES = 1 << 16  # 65,536 sequences in one engine call (an RL step, an eval batch): prompt lists,
# seeds and results of one call are held in memory at once (the paper's RL step: 32 × 64 = 2,048)
LOGPROB_SLACK = 1e-4  # a log-prob may exceed 0 by this much (float rounding), never more


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


def check_sampling(n: int, temperature: float, top_p: float, max_new_tokens: int | None = None,
                   n_field: str = "n", tokens_field: str = "max_new_tokens") -> None:
    """The one check of the sampling settings (every config that has them calls it, and every
    :class:`SamplingParams`): refused with the option's name (``n_field``, ``tokens_field``: what the config
    calls them) when out of range, the hard caps included."""
    require(n >= 1, n_field, "must be ≥ 1 (samples per problem)", n)
    require(n <= MAX_SAMPLES, n_field, f"must be ≤ {MAX_SAMPLES:,} samples per problem "
            "(t1.rollout.base.MAX_SAMPLES)", n)
    require(math.isfinite(temperature) and temperature >= 0, "temperature", "must be ≥ 0", temperature)
    require(math.isfinite(top_p) and 0 < top_p <= 1, "top_p", "must be in (0, 1]", top_p)
    if max_new_tokens is not None:
        check_tokens(max_new_tokens, tokens_field)


def check_tokens(tokens: int, field: str = "max_new_tokens") -> None:
    """A token budget: ≥ 1 and at most :data:`MAX_NEW_TOKENS` (the model's context is checked once it is known:
    :func:`t1.rollout.bounds.check_context`)."""
    require(tokens >= 1, field, "must be ≥ 1", tokens)
    require(tokens <= MAX_NEW_TOKENS, field, f"must be ≤ {MAX_NEW_TOKENS:,} tokens "
            "(t1.rollout.base.MAX_NEW_TOKENS; the model's context bounds it further)", tokens)


def check_sequences(prompts: int, samples: int, field: str, what: str) -> None:
    """``prompts`` × ``samples`` sequences go to the engine in one call: at most :data:`MAX_SEQUENCES`.
    ``field`` names the option to lower, ``what`` the two factors (for the message)."""
    total = prompts * samples
    if total > MAX_SEQUENCES:
        raise ConfigError(f"{field}: {prompts:,} × {samples:,} = {total:,} sequences in one engine call ({what}) "
                          f"is more than {MAX_SEQUENCES:,} (t1.rollout.base.MAX_SEQUENCES): lower {field} to "
                          f"≤ {max(1, MAX_SEQUENCES // samples):,}")


def check_logprobs(where: str, values, n: int, error: type[EngineError] = EngineError) -> list[float]:
    """``n`` log-probs from a server (``where``: its URL), as floats: each a finite number ≤ :data:`LOGPROB_SLACK`
    (a log-probability is ≤ 0; NaN, ±Infinity and +50 are refused), else ``error`` naming the server and the
    value. Why: a bad one reaches the IS weights (exp(π_train − π_sampler) collapses to 0 or explodes) and the
    metrics file (``Infinity`` is not JSON), far from the server that sent it."""
    if not isinstance(values, list) or len(values) != n:
        raise error(f"{where}: expected {n} token log-probs, got {shown(values)}")
    for i, v in enumerate(values):
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise error(f"{where}: a token log-prob is not a number: {shown(v)} (token {i})")
        f = float(v) if isinstance(v, float) or abs(v) < 1 << 60 else math.copysign(math.inf, v)
        if not (math.isfinite(f) and f <= LOGPROB_SLACK):  # NaN fails both
            raise error(f"{where}: token log-prob {shown(v)} (token {i}) is not a log-probability: each must be "
                        f"finite and ≤ 0")
    return [float(v) for v in values]


def shown(value, limit: int = 200) -> str:
    """``str(value)`` cut to ``limit`` characters, for messages about untrusted data: a deeply nested reply
    cannot make the message itself fail (RecursionError)."""
    try:
        return str(value)[:limit]
    except (RecursionError, ValueError):  # ValueError: an int too long to print
        return f"<{type(value).__name__} too deep or large to show>"


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
