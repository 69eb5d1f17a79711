"""Rewards the user supplies (``data.reward``): a Python function, named by import path, that replaces the
task's 0/1 score as RL's reward before T1's penalties.

``data.reward: package.module:function`` (or ``path/to/file.py:function``) is called as
``function(prompt, response, row)`` — the prompt as the model saw it before any chat template, the response
text, and the data row (the JSON Lines row; for generated Countdown problems, the problem's fields) — and
returns a float, or a dict of named floats. The reward is Σ_name w_name · r_name with ``data.reward_weights``
(a float is named after the function, weight 1 unless listed); the task's own verifier stays available as the
named reward ``correct`` (weight 0 unless listed). Every named reward is logged before penalties as
``rewards/<name>/mean`` and ``/std`` (TRL's names), with ``rewards/failed``, the share of calls that failed.

Two more sources, bounded like every server call in t1 (:func:`t1.rollout.openai.post_json`: the whole
attempt in time, the reply in size, no redirects, the key never in an error):

* ``data.reward: http://host:port/path`` — a reward server: POST ``{"prompt", "response", "row"}``, reply
  ``{"reward": float}`` or ``{"rewards": {name: float}}`` (named ``server`` when a float); the key, if any,
  from the environment variable ``data.reward_api_key_env``.
* ``data.reward: judge:http://host:port/v1`` — an LLM judge behind any OpenAI-compatible server:
  ``data.judge.template`` (``{prompt}``, ``{response}``, ``{answer}`` filled in one pass, so a response
  cannot smuggle the gold answer in) sent to ``/chat/completions`` with ``data.judge.model`` at temperature
  0; the reply's first word YES / NO, or a number in [0, 1], is the reward (named ``judge``); anything else
  counts as a failed call.

The function (or the client) runs in worker processes (:class:`t1.pool.DeadlinePool`, forked before any
CUDA or engine thread exists), each call bounded by ``data.reward_timeout`` seconds. A call that raises,
runs past its limit, returns something that is not a finite number (or a dict of them), or names a reward
not in ``data.reward_weights`` costs that sample its reward (0 for every named reward) and is counted —
never the run. Its text is never printed; the warning names the error's type.
"""

from __future__ import annotations

import math
import numbers
import os
import re
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from t1.config import ConfigError
from t1.plugins import load_object
from t1.pool import DeadlinePool, Outcome

CORRECT = "correct"  # the task's own verifier, as a named reward
JUDGE_TEMPLATE = ("Problem:\n{prompt}\n\nReference answer: {answer}\n\nResponse:\n{response}\n\nIs the "
                  "response's final answer correct (equivalent to the reference answer)? Reply YES or NO.")
JUDGE_MAX_CHARS = 32_000  # of the response shown to the judge (its tail: where the answer is)


def load_function(ref: str, field: str = "data.reward") -> Callable:
    """``module:function`` or ``file.py:function`` → the function (:func:`t1.plugins.load_object`)."""
    fn = load_object(ref, field)
    if not callable(fn):
        raise ConfigError(f"{field}: {ref!r} is not a function")
    return fn


_FN: Callable | None = None  # in the workers: the user's function (inherited through fork)


@dataclass(frozen=True)
class _Server:
    """A reward server (``data.reward: http://…``), called from a worker."""

    url: str
    key_env: str
    timeout: float
    __name__ = "server"

    def __call__(self, prompt: str, response: str, row: dict):
        from t1.rollout.openai import post_json

        reply = post_json(self.url, {"prompt": prompt, "response": response, "row": row},
                          api_key=os.environ.get(self.key_env) or None, timeout=self.timeout, max_retries=1,
                          max_bytes=1 << 16)
        if "rewards" in reply and isinstance(reply["rewards"], dict):
            return reply["rewards"]
        if "reward" in reply:
            return reply["reward"]
        raise ValueError("reply has neither 'reward' nor 'rewards'")


_PLACEHOLDER = re.compile(r"\{(prompt|response|answer)\}")


def render(template: str, prompt: str, response: str, answer: str) -> str:
    """``template`` with ``{prompt}``, ``{response}`` and ``{answer}`` filled in one pass: text that comes in
    (a response writing ``{answer}``) is never filled again."""
    values = {"prompt": prompt, "response": response[-JUDGE_MAX_CHARS:], "answer": answer}
    return _PLACEHOLDER.sub(lambda m: values[m.group(1)], template)


def judge_verdict(text: str) -> float:
    """The judge's reply as a reward: a first word YES / NO (any case, punctuation ignored) or a number in
    [0, 1]; else ValueError (a failed call)."""
    words = text.strip().split()
    first = words[0].strip(".,;:!*\"'") if words else ""
    if first.lower() in ("yes", "no"):
        return 1.0 if first.lower() == "yes" else 0.0
    try:
        x = float(first)
    except ValueError:
        raise ValueError("judge reply is neither YES/NO nor a number") from None
    if not 0.0 <= x <= 1.0:  # NaN fails this too
        raise ValueError("judge reply is a number outside [0, 1]")
    return x


@dataclass(frozen=True)
class _Judge:
    """An LLM judge (``data.reward: judge:<base url>``), called from a worker."""

    base_url: str
    model: str
    template: str
    max_tokens: int
    key_env: str
    timeout: float
    __name__ = "judge"

    def __call__(self, prompt: str, response: str, row: dict):
        from t1.rollout.openai import post_json

        answer = str(row.get("answer", row.get("target", "")))
        payload = {"model": self.model, "temperature": 0.0, "max_tokens": self.max_tokens,
                   "messages": [{"role": "user", "content": render(self.template, prompt, response, answer)}]}
        reply = post_json(self.base_url.rstrip("/") + "/chat/completions", payload,
                          api_key=os.environ.get(self.key_env) or None, timeout=self.timeout, max_retries=1,
                          max_bytes=1 << 20)
        try:
            text = reply["choices"][0]["message"]["content"]
        except (KeyError, IndexError, TypeError):
            raise ValueError("judge reply has no choices[0].message.content") from None
        return judge_verdict(str(text))


def source(ref: str, d) -> Callable:
    """The callable behind ``data.reward`` (``d``: the data config): a Python function, a reward server or an
    LLM judge."""
    if ref.startswith(("http://", "https://")):
        return _Server(ref, d.reward_api_key_env, d.reward_timeout)
    if ref.startswith("judge:"):
        url = ref[len("judge:"):]
        if not url.startswith(("http://", "https://")):
            raise ConfigError(f"data.reward: judge: needs a server address, judge:http://host:port/v1 "
                              f"(got {ref!r})")
        if not d.judge.model:
            raise ConfigError("data.judge.model: is required for an LLM judge (the model the server serves)")
        return _Judge(url, d.judge.model, d.judge.template or JUDGE_TEMPLATE, d.judge.max_tokens,
                      d.reward_api_key_env, d.reward_timeout)
    return load_function(ref)


def _call(prompt: str, response: str, row: dict):  # runs in a worker
    return _FN(prompt, response, row)


@dataclass
class Named:
    """One batch's rewards: per name a [N] tensor (before penalties), the weighted total, which calls failed
    ([N] bool) and why (counts)."""

    values: dict[str, torch.Tensor]
    total: torch.Tensor
    failed: torch.Tensor
    reasons: Counter

    @property
    def n_failed(self) -> int:
        return int(self.failed.sum())

    def take(self, idx: list[int]) -> Named:
        """The samples ``idx`` (dynamic sampling keeps some groups of several rounds)."""
        return Named({k: v[idx] for k, v in self.values.items()}, self.total[idx], self.failed[idx], self.reasons)

    @staticmethod
    def cat(parts: list[Named]) -> Named:
        return Named({k: torch.cat([p.values[k] for p in parts]) for k in parts[0].values},
                     torch.cat([p.total for p in parts]), torch.cat([p.failed for p in parts]),
                     sum((p.reasons for p in parts), Counter()))


class UserReward:
    """``data.reward`` for one process: :meth:`start` forks the workers, calling the object scores a batch,
    :meth:`close` stops them."""

    def __init__(self, fn: Callable, weights: dict[str, float], timeout: float, workers: int):
        global _FN
        self.fn = _FN = fn
        self.fn_name = getattr(self.fn, "__name__", "reward")
        self.weights = {str(k): float(v) for k, v in weights.items()}
        self.names = list(self.weights) if self.weights else [self.fn_name]
        self.names = [n for n in self.names if n != CORRECT]
        self.pool = DeadlinePool(_call, workers, timeout)

    def start(self) -> None:
        self.pool.start()

    def close(self) -> None:
        self.pool.close()

    def _named(self, outcome: Outcome) -> tuple[dict[str, float] | None, str]:
        """One call's rewards by name, or (None, why it counts as failed)."""
        if outcome.status != "ok":
            return None, outcome.status if outcome.status == "timeout" else outcome.error.split(":")[0] or "error"
        v = outcome.value
        if isinstance(v, dict):
            unknown = [k for k in v if k not in self.names]
            if unknown:
                return None, f"reward name {str(unknown[0])[:40]!r} not in data.reward_weights"
            pairs = list(v.items())
        else:
            pairs = [(self.fn_name, v)]
            if self.fn_name not in self.names:
                return None, f"a float, named {self.fn_name!r}, not in data.reward_weights"
        out = {}
        for k, x in pairs:
            if isinstance(x, torch.Tensor) and x.numel() == 1:
                x = x.item()  # a one-element tensor
            if isinstance(x, bool) or not isinstance(x, numbers.Real) or not math.isfinite(x):
                return None, f"{type(x).__name__} {str(x)[:20]!r} is not a finite number"
            out[k] = float(x)  # numpy's scalars are numbers.Real too
        return out, ""

    def __call__(self, prompts: Sequence[str], responses: Sequence[str], rows: Sequence[dict],
                 correct: torch.Tensor) -> Named:
        outcomes = self.pool.map(list(zip(prompts, responses, rows)))
        values = {n: torch.zeros(len(outcomes)) for n in self.names}
        failed, reasons = torch.zeros(len(outcomes), dtype=torch.bool), Counter()
        for i, outcome in enumerate(outcomes):
            named, why = self._named(outcome)
            if named is None:
                failed[i] = True
                reasons[why] += 1
                continue
            for k, x in named.items():
                values[k][i] = x
        values[CORRECT] = correct.float()
        total = sum(self.weights.get(n, 1.0 if n != CORRECT else 0.0) * v for n, v in values.items())
        return Named(values, total, failed, reasons)
