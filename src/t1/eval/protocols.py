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

R1_SAMPLES = {"aime24": 64, "aime25": 64, "amc23": 64, "gpqa": 8}
R1_DEFAULT_SAMPLES = 4

PRESETS = {
    "r1": {"temperature": 0.6, "top_p": 0.95, "max_new_tokens": 32768, "n": 0},
    "greedy": {"temperature": 0.0, "top_p": 1.0, "max_new_tokens": 32768, "n": 1},
}


def samples_for(n: int, bench: str) -> int:
    """Samples per problem on ``bench``: ``n``, or with ``n = 0`` the r1 protocol's number for the benchmark."""
    return n if n > 0 else R1_SAMPLES.get(bench, R1_DEFAULT_SAMPLES)


def describe(cfg, benches: list[str]) -> str:
    """One line: the preset and the sampling values in force (``cfg``: an eval or scale config)."""
    per = ", ".join(f"{b} n={samples_for(cfg.n, b)}" for b in benches)
    return (f"preset {cfg.preset}: temperature {cfg.temperature}, top_p {cfg.top_p}, "
            f"max_new_tokens {getattr(cfg, 'max_new_tokens', '-')}, pass@1 = mean over n samples ({per})")
