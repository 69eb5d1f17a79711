"""Estimators: pass@1 as mean ± standard error, unbiased pass@k, majority vote; a scaling point's truncated
share."""

from __future__ import annotations

import math
import statistics
from collections import Counter


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from n samples of which c are correct (Chen et al., 2021): 1 − C(n−c, k) / C(n, k)."""
    if k > n:
        raise ValueError(f"k={k} > n={n}")
    if n - c < k:
        return 1.0
    prod = 1.0
    for i in range(n - c + 1, n + 1):  # C(n-c, k)/C(n, k) as a stable product
        prod *= 1.0 - k / i
    return 1.0 - prod


def mean_stderr(values: list[float]) -> tuple[float, float]:
    """Mean and the standard error of the mean (0 for fewer than two values)."""
    n = len(values)
    if n == 0:
        return 0.0, 0.0
    m = sum(values) / n
    if n < 2:
        return m, 0.0
    var = sum((v - m) ** 2 for v in values) / (n - 1)
    return m, math.sqrt(var / n)


def pass1_stats(correct: list[list[bool]]) -> tuple[float, float]:
    """pass@1 over problems (each problem: its per-sample correctness) and its standard error across problems."""
    return mean_stderr([sum(c) / len(c) for c in correct if c])


def majority_correct(answers: list[str | None], correct: list[bool]) -> bool:
    """Whether the most common extracted answer (ties: first seen) is a correct one. No answer never wins."""
    votes = Counter(a for a in answers if a is not None)
    if not votes:
        return False
    top = max(votes.items(), key=lambda kv: (kv[1], -answers.index(kv[0])))[0]
    return any(ok for a, ok in zip(answers, correct) if a == top)


def truncated(point: dict) -> float | None:
    """The share of responses cut at a scaling point's budget (1 − ``finished_rate``, as `t1 scale` writes the
    point); None when the point lacks it (curves from before it was recorded)."""
    return None if point.get("finished_rate") is None else 1.0 - point["finished_rate"]


def finished_length_growth(rows: list[dict], share: float = 0.1) -> float | None:
    """From an RL run's metrics rows (its ``metrics.jsonl``): the mean of
    ``completions/mean_terminated_length`` (responses that end by themselves) over the last ``share`` of the
    steps minus over the first (at least 3 rows each); None when the run logged too few steps or not the metric.
    A run that only learns to stop inside its budget shortens its mean length by truncating less, not this
    one."""
    lengths = [r.get("completions/mean_terminated_length") for r in rows]
    lengths = [x for x in lengths if isinstance(x, (int, float)) and x == x and x > 0]
    k = max(3, round(share * len(lengths)))
    if len(lengths) < 2 * k:
        return None
    return statistics.fmean(lengths[-k:]) - statistics.fmean(lengths[:k])
