"""The demo's part of its report: the headline table, RL − SFT at the training and the free budget, and every
check with its number (mean ± std over seeds and each seed's), from ``summary.json``; the rest of the page (the
scaling curves with truncation, training curves, evaluations, rollouts) is `t1 report`'s."""

from __future__ import annotations

import html
from pathlib import Path

from t1.eval.page import pct, table
from t1.io import read_json
from t1.pipelines.demo.checks import rule, show
from t1.stages.report import write_report


def write_demo_report(out: str | Path) -> Path:
    """``report.html`` of a demo directory: the demo's result and checks first, then every section of
    :func:`t1.stages.report.write_report`."""
    return write_report(out, head=head(Path(out)))


def head(run: Path) -> list[str]:
    """The demo's headline table and checks (from summary.json)."""
    if not (run / "summary.json").exists():
        return []
    summary = read_json(run / "summary.json")
    if not isinstance(summary, dict) or "accuracy_budget" not in summary:  # another stage's summary (t1 eval)
        return []
    b = summary["accuracy_budget"]
    seeds = summary.get("seeds", [])

    def full(label: str) -> str:
        return (f"{pct(summary['full_budget_pass@1'][label])} ± "
                f"{100 * summary['full_budget_pass@1_stderr'][label]:.1f}")

    rows = [["SFT, trial-and-error traces", pct(summary["sft_accuracy"]), full("sft")]]
    if len(seeds) > 1:
        full_mean = sum(summary["full_budget_pass@1"][x["label"]] for x in seeds) / len(seeds)
        rows.append([f"RL (T1 recipe) from that SFT, mean of {len(seeds)} seeds", pct(summary["rl_accuracy"]),
                     pct(full_mean)])
        rows += [[f"RL, seed {x['seed']}", pct(x["rl_accuracy"]), full(x["label"])] for x in seeds]
    else:
        rows.append(["RL (T1 recipe) from that SFT", pct(summary["rl_accuracy"]), full("rl")])
    rows.append(["SFT, direct solutions (equal compute)", pct(summary["direct_sft_accuracy"]),
                 full("direct_sft")])
    parts = ["<h2>Result</h2>", table(["model", f"accuracy @ {b} tokens (RL budget)", "pass@1, full budget"],
                                       rows)]
    if "check_values" in summary:
        parts += _gap(summary) + _checks(summary)
    else:  # a summary.json from before the checks had numbers
        parts.append("<ul class='checks'>" + "".join(
            f"<li class='{'ok' if v else 'no'}'>{'✓' if v else '✗'} {html.escape(k.replace('_', ' '))}</li>"
            for k, v in summary.get("checks", {}).items()) + "</ul>")
    parts.append(f"<p>Sampled pass@1 at temperature 1.0 on {summary['eval_problems']} held-out problems "
                 f"(never in any training set); ± is one standard error. Wall time "
                 f"{summary['wall_seconds']:.0f} s: " + ", ".join(
                     f"{html.escape(k)} {v:.0f} s" for k, v in summary["stage_seconds"].items()) + ".</p>")
    return parts


def _gap(s: dict) -> list[str]:
    """RL − SFT at the training budget and at the free budget (where neither truncates)."""
    cut = ", ".join(f"{html.escape(k)} {pct(s['free_budget_truncation'][k])}" for k in ["sft", *s["rl_labels"]])
    free = (f"the smallest budget at which SFT and RL truncate at most {pct(s['free_budget_truncation_limit'])} "
            f"of their responses" if s["free_budget_truncation_ok"] else
            f"<b>no budget has SFT and RL truncating at most {pct(s['free_budget_truncation_limit'])}</b>: the "
            f"largest, flagged free_budget_truncation_ok: false")
    over = f" (mean over {len(s['seeds'])} RL seeds)" if len(s["seeds"]) > 1 else ""
    gap = "rl_beats_sft_by_10_points"  # its number is RL − SFT
    return [f"<p>RL − SFT{over}: <b>{show(gap, s['rl_minus_sft_at_training_budget'])}"
            f"</b> points at the training budget ({s['accuracy_budget']} tokens), where part of the gain is RL "
            f"finishing inside the budget; <b>{show(gap, s['rl_minus_sft_at_free_budget'])}"
            f"</b> points at the free budget, {s['free_budget']} tokens — {free} (truncated there: {cut})."
            + ("" if s.get("rl_minus_sft_length_at_free_budget") is None else
               f" There RL's responses are {s['rl_minus_sft_length_at_free_budget']:+.1f} tokens longer than "
               "SFT's on the same problems (not a check: the paper's longer reasoning is judged by the growth "
               "during RL below).")
            + "</p>"]


def _checks(s: dict) -> list[str]:
    """Each check: ✓/✗, its number (mean ± std over seeds), the threshold, and each seed's number."""
    seeds = s["seeds"]
    many = len(seeds) > 1
    header = ["check", "number" + (f" (mean ± std, {len(seeds)} seeds)" if many else ""), "judged against",
              "what the number is"] + ([f"seed {x['seed']}" for x in seeds] if many else [])
    rows = []
    for k, ok in s["checks"].items():
        value = show(k, s["check_mean"][k])
        if many and s["check_std"][k] is not None:
            value += f" ± {show(k, s['check_std'][k], signed=False)}"
        each = [show(k, x["check_values"][k]) for x in seeds] if many else []
        rows.append([f"{'✓' if ok else '✗'} {k.replace('_', ' ')}", value, rule(k),
                     s["check_thresholds"][k]["what"], *each])
    note = "<p>Checks judged on the mean over the seeds.</p>" if many else ""
    return [table(header, rows) + note]
