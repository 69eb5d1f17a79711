"""Rewards the user supplies (``data.reward``): a Python function, named by import path, that replaces the
task's 0/1 score as RL's reward before T1's penalties.

``data.reward: package.module:function`` (or ``path/to/file.py:function``) is called as
``function(prompt, response, row)`` — the prompt as the model saw it before any chat template, the response
text, and the data row (the JSON Lines row; for generated Countdown problems, the problem's fields) — and
returns a float, or a dict of named floats. The reward is Σ_name w_name · r_name with ``data.reward_weights``
(a float is named after the function, weight 1 unless listed); the task's own verifier stays available as the
named reward ``correct`` (weight 0 unless listed). Every named reward is logged before penalties as
``rewards/<name>/mean`` and ``/std`` (TRL's names), with ``rewards/failed``, the share of calls that failed.

The function runs in worker processes (:class:`t1.pool.DeadlinePool`, forked before any CUDA or engine
thread exists), each call bounded by ``data.reward_timeout`` seconds. A call that raises, runs past its
limit, returns something that is not a finite number (or a dict of them), or names a reward not in
``data.reward_weights`` costs that sample its reward (0 for every named reward) and is counted — never the
run. Its text is never printed; the warning names the error's type and message.
"""

from __future__ import annotations

import importlib
import importlib.util
import math
import sys
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from t1.config import ConfigError
from t1.pool import DeadlinePool, Outcome

CORRECT = "correct"  # the task's own verifier, as a named reward


def load_function(ref: str, field: str = "data.reward") -> Callable:
    """``module:function`` or ``file.py:function`` → the function; a mistake is one ConfigError naming the
    field."""
    module_name, sep, name = ref.rpartition(":")
    if not sep or not module_name or not name.isidentifier():
        raise ConfigError(f"{field}: expected package.module:function or path/file.py:function (got {ref!r})")
    try:
        if module_name.endswith(".py"):
            path = Path(module_name)
            if not path.is_file():
                raise ConfigError(f"{field}: {path}: no such file")
            spec = importlib.util.spec_from_file_location(f"t1_user_reward_{path.stem}", path)
            module = importlib.util.module_from_spec(spec)
            sys.modules[spec.name] = module  # picklable by reference in the workers
            spec.loader.exec_module(module)
        else:
            module = importlib.import_module(module_name)
    except ConfigError:
        raise
    except Exception as e:  # the user's module: any import-time failure is a config error, one line
        raise ConfigError(f"{field}: cannot import {module_name!r}: {type(e).__name__}: {e}"[:500]) from None
    fn = getattr(module, name, None)
    if not callable(fn):
        raise ConfigError(f"{field}: {module_name!r} has no function {name!r}")
    return fn


_FN: Callable | None = None  # in the workers: the user's function (inherited through fork)


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

    def __init__(self, ref: str, weights: dict[str, float], timeout: float, workers: int):
        global _FN
        self.fn = _FN = load_function(ref)
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
            if isinstance(x, bool) or not isinstance(x, (int, float)) or not math.isfinite(x):
                return None, f"{type(x).__name__} {str(x)[:20]!r} is not a finite number"
            out[k] = float(x)
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
