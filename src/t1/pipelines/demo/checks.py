"""The demo's checks as numbers: each check is a number judged against a threshold, computed per RL seed from
the scaling curves, and judged on the mean over seeds.

Plain dictionaries in, plain dictionaries out (``t1 demo`` writes them to summary.json); nothing here runs a
model. A scaling curve is ``[{budget, accuracy, stderr, finished_rate, …}]`` in increasing budget order, as
``t1 scale`` writes it.

The checks are the paper's claims at the demo's scale: RL beats SFT by 10 points at the training budget *and*
where nothing truncates; RL is at or above SFT from the training budget up and its curve rises with the budget;
RL's responses that end by themselves grow longer during RL (the paper's "longer reasoning"); trial-and-error SFT
beats direct SFT where it has room; the demo fits ten minutes.

The *free budget* is the smallest budget of the sweep at which SFT and every RL model truncate at most
:data:`FREE_TRUNCATION` of their responses: there, RL − SFT measures what RL learned beyond finishing inside
the training budget. If no budget is free, the summary shows the largest budget, flagged
(``free_budget_truncation_ok``), and the free-budget check has no number: it fails.
"""

from __future__ import annotations

import statistics

from t1.eval.metrics import truncated

FREE_TRUNCATION = 0.02  # at most this share of responses cut at the budget counts as "nothing truncates"
EPS = 1e-9  # accuracies are k/n fractions: a difference that should be 0.10 may be 0.0999999…

# name: (comparison, threshold, what the number is, unit for display)
CHECKS: dict[str, tuple[str, float, str, str]] = {
    "rl_beats_sft_by_10_points": (">=", 0.10, "RL − SFT accuracy at the training budget", "points"),
    "rl_rises_with_budget": (">=", 0.0, "RL's smallest step-to-step accuracy change over the budgets "
                                        "(no number with fewer than 4 budgets)", "points"),
    "rl_largest_at_least_2x_smallest": (">=", 2.0, "RL accuracy at the largest budget / at the smallest "
                                                   "(no number when the smallest is 0)", "ratio"),
    "rl_at_or_above_sft_from_training_budget": (">=", 0.0, "smallest RL − SFT over the budgets from the "
                                                           "training budget up", "points"),
    "trial_and_error_beats_direct_at_largest_budget": (">", 0.0, "SFT (trial-and-error) − SFT (direct) at the "
                                                                 "largest budget", "points"),
    "rl_beats_sft_by_10_where_nothing_truncates": (">=", 0.10, "RL − SFT accuracy at the free budget (no number "
                                                               "when no budget of the sweep is free)", "points"),
    "rl_finished_length_grows": (">", 0.0, "mean length of RL's responses that end by themselves: last 10 % of "
                                           "the steps − first 10 % (no number without the metric)", "tokens"),
    "under_10_minutes": ("<=", 600.0, "wall seconds (with several seeds: the shared stages plus one seed's RL, "
                                      "evaluation and share of the sweep)", "seconds"),
}


def at(points: list[dict], budget: int, key: str = "accuracy") -> float | None:
    return next((p.get(key) for p in points if p["budget"] == budget), None)


def length_gap(curves: dict[str, list[dict]], rl: str, budget: int) -> float | None:
    """RL's mean response length minus SFT's on the held-out problems at ``budget`` (the free budget: both
    finish nearly every response there), in tokens; None where a curve lacks the lengths. Not a check: the
    paper's "longer reasoning" is judged by growth during RL (:func:`t1.eval.metrics.finished_length_growth`);
    this says whether RL's model answers at greater length than the SFT model it started from."""
    a, b = at(curves[rl], budget, "mean_tokens"), at(curves["sft"], budget, "mean_tokens")
    return None if a is None or b is None else a - b


def free_budget(curves: dict[str, list[dict]], labels: list[str]) -> tuple[int, bool]:
    """(the smallest budget at which every model in ``labels`` truncates ≤ FREE_TRUNCATION, True), else
    (the largest budget, False)."""
    budgets = [p["budget"] for p in curves[labels[0]]]
    for b in budgets:
        cut = [truncated(next(p for p in curves[lab] if p["budget"] == b)) for lab in labels]
        if all(c is not None and c <= FREE_TRUNCATION + EPS for c in cut):
            return b, True
    return budgets[-1], False


def judge(name: str, value: float | None) -> bool:
    """A check's verdict on its number (None: no number, fails)."""
    if value is None:
        return False
    op, threshold = CHECKS[name][:2]
    return {">=": value >= threshold - EPS, ">": value > threshold + EPS, "<=": value <= threshold + EPS}[op]


def check_values(curves: dict[str, list[dict]], rl: str, training_budget: int, free: int | None,
                 seconds: float, length_growth: float | None = None) -> dict[str, float | None]:
    """Every check's number for one RL model (label ``rl``) against the SFT models ``sft`` and ``direct_sft``;
    ``free``: the free budget (None: none in the sweep); ``length_growth``:
    :func:`t1.eval.metrics.finished_length_growth` of its run."""
    acc = {lab: [p["accuracy"] for p in pts] for lab, pts in curves.items()}
    budgets = [p["budget"] for p in curves[rl]]
    rl_at, sft_at = at(curves[rl], training_budget), at(curves["sft"], training_budget)
    from_train = [i for i, b in enumerate(budgets) if b >= training_budget]
    r, s = acc[rl], acc["sft"]
    return {
        "rl_beats_sft_by_10_points": None if rl_at is None else rl_at - sft_at,
        "rl_rises_with_budget": min(b - a for a, b in zip(r, r[1:])) if len(r) >= 4 else None,
        "rl_largest_at_least_2x_smallest": r[-1] / r[0] if r[0] > 0 else None,
        "rl_at_or_above_sft_from_training_budget": min(r[i] - s[i] for i in from_train) if from_train else None,
        "trial_and_error_beats_direct_at_largest_budget": s[-1] - acc["direct_sft"][-1],
        "rl_beats_sft_by_10_where_nothing_truncates": None if free is None else
        at(curves[rl], free) - at(curves["sft"], free),
        "rl_finished_length_grows": length_growth,
        "under_10_minutes": seconds,
    }


def spread(values: list[float | None]) -> dict[str, float | None]:
    """mean, sample standard deviation (0 with one value), min and max; all None if any value is None."""
    if not values or any(v is None for v in values):
        return {"mean": None, "std": None, "min": None, "max": None}
    return {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0,
            "min": min(values), "max": max(values)}


def summarize(curves: dict[str, list[dict]], rl_labels: list[str], seeds: list[int], training_budget: int,
              seed_seconds: list[float], length_growth: list[float | None] | None = None) -> dict:
    """The checks part of the demo's summary: per model and budget accuracy and truncation, RL − SFT at the
    training and the free budget, each seed's check numbers, their mean / std / min / max, and the checks
    judged on the means. ``length_growth``: each seed's :func:`t1.eval.metrics.finished_length_growth` (None:
    not known)."""
    labels = [lab for lab in ("sft", *rl_labels, "direct_sft") if lab in curves]
    free, ok = free_budget(curves, ["sft", *rl_labels])
    growth = list(length_growth or [None] * len(rl_labels))
    per_seed = []
    for lab, seed, secs, grew in zip(rl_labels, seeds, seed_seconds, growth):
        values = check_values(curves, lab, training_budget, free if ok else None, secs, grew)
        gap_free = at(curves[lab], free) - at(curves["sft"], free)  # shown even where the budget is not free
        per_seed.append({"seed": seed, "label": lab, "rl_accuracy": at(curves[lab], training_budget),
                         "rl_minus_sft_at_training_budget": values["rl_beats_sft_by_10_points"],
                         "rl_minus_sft_at_free_budget": gap_free, "finished_length_growth": grew,
                         "rl_minus_sft_length_at_free_budget": length_gap(curves, lab, free),
                         "check_values": values, "checks": {k: judge(k, v) for k, v in values.items()}})
    stats = {k: spread([s["check_values"][k] for s in per_seed]) for k in CHECKS}
    mean = {k: stats[k]["mean"] for k in CHECKS}
    return {
        "scaling": {lab: [{"budget": p["budget"], "accuracy": p["accuracy"], "stderr": p["stderr"],
                           "truncated_rate": truncated(p), "mean_tokens": p.get("mean_tokens")}
                          for p in curves[lab]] for lab in labels},
        "rl_labels": list(rl_labels),
        "rl_minus_sft_at_training_budget": mean["rl_beats_sft_by_10_points"],
        "free_budget": free, "free_budget_truncation_ok": ok, "free_budget_truncation_limit": FREE_TRUNCATION,
        "free_budget_truncation": {lab: truncated(next(p for p in curves[lab] if p["budget"] == free))
                                   for lab in labels},
        "free_budget_accuracy": {lab: at(curves[lab], free) for lab in labels},
        "rl_minus_sft_at_free_budget": spread([x["rl_minus_sft_at_free_budget"] for x in per_seed])["mean"],
        "rl_minus_sft_length_at_free_budget": spread([x["rl_minus_sft_length_at_free_budget"]
                                                      for x in per_seed])["mean"],
        "check_values": mean,
        "check_thresholds": {k: {"op": op, "threshold": t, "what": what, "unit": unit}
                             for k, (op, t, what, unit) in CHECKS.items()},
        "seeds": per_seed,
        **{f"check_{stat}": {k: stats[k][stat] for k in CHECKS} for stat in ("mean", "std", "min", "max")},
        "checks": {k: judge(k, mean[k]) for k in CHECKS},
    }


def show(name: str, value: float | None, signed: bool = True) -> str:
    """A check's number for people: accuracy differences in points, ratios with an ×, seconds."""
    if value is None:
        return "—"
    unit = CHECKS[name][3]
    if unit == "points":
        return f"{100 * value:+.1f}" if signed else f"{100 * value:.1f}"
    if unit == "tokens":
        return f"{value:+.1f} tok" if signed else f"{value:.1f} tok"
    return f"{value:.2f}×" if unit == "ratio" else f"{value:.0f} s"


def rule(name: str) -> str:
    """``≥ +10.0`` and the like: the threshold a check's number is judged against, in its display unit."""
    op, threshold = CHECKS[name][:2]
    return {">=": "≥", ">": ">", "<=": "≤"}[op] + " " + show(name, threshold)
