"""Published evaluation protocols, as config presets for `t1 eval` and `t1 scale` (``preset=r1`` / ``greedy``).

``r1`` — DeepSeek-R1's protocol (also open-r1's): sampling at temperature 0.6, top-p 0.95, up to 32,768 new
tokens, and pass@1 reported as the mean correctness over n samples per problem, n by the benchmark's size
(DeepSeek-R1: "typically between 4 and 64, depending on the test set size"): 64 for the 30-40-problem AIME
and AMC sets, 8 for GPQA Diamond (198 questions), 4 for the 500-problem sets.

``greedy`` — lighteval's default: one greedy sample (temperature 0) per problem, up to 32,768 new tokens.

A preset sets defaults only: a config file or a ``key=value`` override still wins (``preset=r1 n=16``). The
resolved values, n per benchmark included, are printed at the start and saved in summary.json.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from t1.config import option, require
from t1.rollout.base import check_sampling
from t1.tasks import GraderName, check_task_name, grader_option

R1_SAMPLES = {"aime24": 64, "aime25": 64, "amc23": 64, "gpqa": 8}
R1_DEFAULT_SAMPLES = 4

PRESETS = {
    "r1": {"temperature": 0.6, "top_p": 0.95, "max_new_tokens": 32768, "n": 0},
    "greedy": {"temperature": 0.0, "top_p": 1.0, "max_new_tokens": 32768, "n": 1},
}


@dataclass(frozen=True)
class SamplingProtocol:
    """The fields `t1 eval` and `t1 scale` share: the protocol (a preset or explicit values), the benchmark
    files and the grader. ``PRESETS`` makes the config loader apply ``preset``'s values as defaults."""

    PRESETS = PRESETS

    preset: Literal["none", "r1", "greedy"] = option(
        "none", "a published protocol's sampling values as defaults: r1 (DeepSeek-R1 / open-r1: T 0.6, top-p "
                "0.95, 32,768 tokens, n by benchmark) | greedy (lighteval's default) | none")
    n: int = option(1, "samples per problem, ≤ 65,536 (t1.rollout.base.MAX_SAMPLES); 0 = the r1 protocol's n per "
                       "benchmark (64 AIME/AMC, 8 GPQA, 4 else)")
    temperature: float = option(1.0, "sampling temperature (0 = greedy)")
    top_p: float = option(1.0, "nucleus sampling mass")
    seed: int = option(0, "sampling seed (each sample has its own, derived from it)")
    limit: int = option(0, "only the first N problems of each benchmark (0 = all)")
    gpqa_csv: str | None = option(None, "the official GPQA Diamond CSV (for bench gpqa; not redistributed)")
    data_dir: str | None = option(None, "benchmark files (null = the copies shipped with t1)")
    grader: GraderName = grader_option()
    task: str | None = option(None, "the task that grades a JSON Lines benchmark (a .jsonl bench): a name or your "
                                    "Task subclass as package.module:Class; null = math")

    def validate(self) -> None:
        if self.task is not None:
            check_task_name(self.task)
        require(self.n >= 0, "n", "must be ≥ 1, or 0 for the r1 protocol's n per benchmark", self.n)
        check_sampling(max(1, self.n), self.temperature, self.top_p)  # n ≤ MAX_SAMPLES too
        require(self.limit >= 0, "limit", "must be ≥ 0 (0 = all problems)", self.limit)


def samples_for(n: int, bench: str) -> int:
    """Samples per problem on ``bench``: ``n``, or with ``n = 0`` the r1 protocol's number for the benchmark."""
    return n if n > 0 else R1_SAMPLES.get(bench, R1_DEFAULT_SAMPLES)


def describe(cfg, benches: list[str]) -> str:
    """One line: the preset and the sampling values in force (``cfg``: an eval or scale config)."""
    per = ", ".join(f"{b} n={samples_for(cfg.n, b)}" for b in benches)
    return (f"preset {cfg.preset}: temperature {cfg.temperature}, top_p {cfg.top_p}, "
            f"max_new_tokens {getattr(cfg, 'max_new_tokens', '-')}, pass@1 = mean over n samples ({per})")
