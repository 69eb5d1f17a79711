"""`t1 report RUN_DIR`: one self-contained HTML page (PNGs embedded, and also written beside it).

Works on a demo directory (``sft/``, ``sft_direct/``, ``rl/``, ``eval/``, ``summary.json``) or on a single
SFT or RL run directory (``metrics.jsonl``, ``completions/`` or ``rollouts.jsonl``); sections without data are
left out.
"""

from __future__ import annotations

import base64
import html
from pathlib import Path

from t1.eval.demo_checks import rule, show, truncated
from t1.io import atomic_write_text, check_output, read_json, read_log

RL_PANELS = [("reward", "mean reward"), ("accuracy", "accuracy"), ("entropy", "token entropy"),
             ("kl", "KL to anchor (per response)"), ("response_length", "response length (tokens)"),
             ("penalties", "penalty rates"), ("time", "step time (s)"), ("tokens_per_s", "completion tokens/s"),
             ("logp_diff", "sampler vs trainer |Δ log p| per token")]


def _rows(path: Path) -> list[dict]:
    """A run's log; a torn last line (a killed or failed write) is dropped with a warning; a null number (NaN or
    ±inf when logged, see :func:`t1.runtime.run.json_line`) in ``metrics.jsonl`` reads as NaN, a gap in the
    curves."""
    rows = read_log(path)
    if path.name != "metrics.jsonl":
        return rows
    return [{k: float("nan") if v is None else v for k, v in row.items()} for row in rows]


def _fig():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> Path:
    """``fig`` as the PNG ``path``; a failed write is an OSError naming ``path`` (matplotlib's names none)."""
    fig.tight_layout()
    try:
        fig.savefig(path, dpi=110)
    except OSError as e:
        raise OSError(e.errno, e.strerror or str(e), str(path)) from None
    finally:
        _fig().close(fig)
    return path


def plot_sft(runs: dict[str, list[dict]], path: Path) -> Path:
    plt = _fig()
    fig, ax = plt.subplots(figsize=(6.4, 3.6))
    for label, rows in runs.items():
        ax.plot([r["step"] for r in rows], [r["loss"] for r in rows], label=label)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss (response tokens)")
    ax.set_yscale("log")
    ax.grid(alpha=0.3)
    ax.legend()
    ax.set_title("SFT loss")
    return _save(fig, path)


def plot_rl(rows: list[dict], path: Path) -> Path:
    plt = _fig()
    fig, axes = plt.subplots(3, 3, figsize=(13, 8.4))
    steps = [r["step"] for r in rows]
    for ax, (key, title) in zip(axes.flat, RL_PANELS):
        if key == "penalties":
            for k in ("penalty_truncated", "penalty_repetitive", "penalty_garbage"):
                ax.plot(steps, [r[k] for r in rows], label=k.split("_")[1])
            ax.legend(fontsize=7)
        elif key == "time":
            ax.stackplot(steps, [r["time_sample"] for r in rows], [r["time_score"] for r in rows],
                         [r["time_train"] for r in rows], [r.get("time_push", 0.0) for r in rows],
                         labels=["sample", "score", "train", "weight push"])
            ax.legend(fontsize=7, loc="upper left")
        elif key == "logp_diff":  # runs whose engine returned log-probs (every engine since the vLLM work)
            for k in ("mean", "max"):
                ax.plot(steps, [r.get(f"sampling/logp_diff_{k}", float("nan")) for r in rows], label=k)
            ax.set_yscale("log")
            ax.legend(fontsize=7)
        else:
            ax.plot(steps, [r[key] for r in rows])
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("step", fontsize=8)
        ax.grid(alpha=0.3)
    return _save(fig, path)


def _img(path: Path, alt: str) -> str:
    data = base64.b64encode(path.read_bytes()).decode()
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


def _table(header: list[str], rows: list[list]) -> str:
    th = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><thead><tr>{th}</tr></thead><tbody>{body}</tbody></table>"


def _pct(x) -> str:
    return "—" if x is None else f"{100 * x:.1f}%"


CSS = """
body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
h1{font-size:1.6em} h2{margin-top:1.6em;border-bottom:1px solid #ddd;padding-bottom:.2em}
table{border-collapse:collapse;margin:.6em 0} td,th{border:1px solid #ccc;padding:.3em .7em;text-align:right}
td:first-child,th:first-child{text-align:left} th{background:#f4f4f4} img{max-width:100%}
.checks{list-style:none;padding:0} .checks .ok{color:#17752b} .checks .no{color:#b3261e}
.rollout{border-left:4px solid #999;margin:.8em 0;padding:.2em .8em;background:#fafafa}
.rollout.correct{border-color:#2e9d4b} .rollout.wrong{border-color:#c77c02}
.rollout.penalised{border-color:#b3261e}
.meta{font-size:.85em;color:#555} .prompt{font-weight:600;margin:.3em 0} pre{white-space:pre-wrap;margin:.2em 0}
"""


def _result(run: Path) -> list[str]:
    """The demo's headline table and checks (from summary.json)."""
    if not (run / "summary.json").exists():
        return []
    summary = read_json(run / "summary.json")
    b = summary["accuracy_budget"]
    seeds = summary.get("seeds", [])

    def full(label: str) -> str:
        return (f"{_pct(summary['full_budget_pass@1'][label])} ± "
                f"{100 * summary['full_budget_pass@1_stderr'][label]:.1f}")

    rows = [["SFT, trial-and-error traces", _pct(summary["sft_accuracy"]), full("sft")]]
    if len(seeds) > 1:
        full_mean = sum(summary["full_budget_pass@1"][x["label"]] for x in seeds) / len(seeds)
        rows.append([f"RL (T1 recipe) from that SFT, mean of {len(seeds)} seeds", _pct(summary["rl_accuracy"]),
                     _pct(full_mean)])
        rows += [[f"RL, seed {x['seed']}", _pct(x["rl_accuracy"]), full(x["label"])] for x in seeds]
    else:
        rows.append(["RL (T1 recipe) from that SFT", _pct(summary["rl_accuracy"]), full("rl")])
    rows.append(["SFT, direct solutions (equal compute)", _pct(summary["direct_sft_accuracy"]),
                 full("direct_sft")])
    parts = ["<h2>Result</h2>", _table(["model", f"accuracy @ {b} tokens (RL budget)", "pass@1, full budget"],
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
    cut = ", ".join(f"{html.escape(k)} {_pct(s['free_budget_truncation'][k])}" for k in ["sft", *s["rl_labels"]])
    free = (f"the smallest budget at which SFT and RL truncate at most {_pct(s['free_budget_truncation_limit'])} "
            f"of their responses" if s["free_budget_truncation_ok"] else
            f"<b>no budget has SFT and RL truncating at most {_pct(s['free_budget_truncation_limit'])}</b>: the "
            f"largest, flagged free_budget_truncation_ok: false")
    over = f" (mean over {len(s['seeds'])} RL seeds)" if len(s["seeds"]) > 1 else ""
    gap = "rl_beats_sft_by_10_points"  # its number is RL − SFT
    return [f"<p>RL − SFT{over}: <b>{show(gap, s['rl_minus_sft_at_training_budget'])}"
            f"</b> points at the training budget ({s['accuracy_budget']} tokens), where part of the gain is RL "
            f"finishing inside the budget; <b>{show(gap, s['rl_minus_sft_at_free_budget'])}"
            f"</b> points at the free budget, {s['free_budget']} tokens — {free} (truncated there: {cut}).</p>"]


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
    return [_table(header, rows) + note]


def _scaling(run: Path) -> list[str]:
    scaling = run / "eval" / "scaling.png"
    if not scaling.exists():
        return []
    data = read_json(run / "eval" / "scaling.json")
    budgets = [p["budget"] for p in next(iter(data["curves"].values()))]
    return ["<h2>Inference scaling</h2>",
            "<p>Accuracy of a single generation whose thinking is cut at each budget; a cut response is "
            "completed by appending the answer cue and letting the same model answer (no verifier, no "
            "voting) — the paper's Figure 1.</p>" + _img(scaling, "accuracy vs thinking budget"),
            _table(["model"] + [str(x) for x in budgets], [
                [lab] + [f"{_pct(p['accuracy'])} ± {100 * p['stderr']:.1f}" for p in pts]
                for lab, pts in data["curves"].items()])] + _truncation(data["curves"], budgets)


def _truncation(curves: dict[str, list[dict]], budgets: list[int]) -> list[str]:
    """The share of each model's responses cut at each budget (curves from before ``finished_rate``: none)."""
    if not all("finished_rate" in p for pts in curves.values() for p in pts):
        return []
    return ["<p>Truncated: the share of responses not finished within the budget (cut there, they are graded "
            "on an answer they already state, else on a forced one).</p>",
            _table(["model"] + [str(x) for x in budgets], [[lab] + [_pct(truncated(p)) for p in pts]
                                                          for lab, pts in curves.items()])]


def _training(run: Path) -> list[str]:
    """SFT loss curves and RL curves, from a demo directory or a single SFT / RL run directory."""
    sft_runs = {lab: _rows(run / d / "metrics.jsonl") for lab, d in
                (("trial-and-error", "sft"), ("direct", "sft_direct"))}
    sft_runs = {k: v for k, v in sft_runs.items() if v and "loss" in v[0] and "reward" not in v[0]}
    rl_rows = _rows(run / "rl" / "metrics.jsonl")
    own = _rows(run / "metrics.jsonl")
    if own and "reward" in own[0]:
        rl_rows = own
    elif own and "loss" in own[0]:
        sft_runs = {"sft": own}
    parts = []
    if sft_runs:
        parts.append("<h2>SFT</h2>" + _img(plot_sft(sft_runs, run / "report_sft.png"), "SFT loss"))
    if rl_rows:
        parts.append("<h2>RL training</h2>" + _img(plot_rl(rl_rows, run / "report_rl.png"), "RL curves"))
        first, last = rl_rows[: max(1, len(rl_rows) // 10)], rl_rows[-max(1, len(rl_rows) // 10):]
        avg = lambda rs, k: sum(r[k] for r in rs) / len(rs)  # noqa: E731
        parts.append(_table(["metric", "first 10% of steps", "last 10% of steps"], [
            [k, f"{avg(first, k):.4f}", f"{avg(last, k):.4f}"]
            for k in ("reward", "accuracy", "response_length", "entropy", "kl", "penalty_truncated")]))
    return parts


def _evaluations(run: Path) -> list[str]:
    evals = sorted((run / "eval").glob("*/summary.json")) if (run / "eval").is_dir() else []
    if not evals:
        return []
    rows = []
    for path in evals:
        data = read_json(path)
        for bench, s in data["benchmarks"].items():
            n = s["samples_per_problem"]
            rows.append([path.parent.name, bench, s["problems"], n,
                         f"{_pct(s['pass@1'])} ± {100 * s['pass@1_stderr']:.1f}",
                         _pct(s.get(f"maj@{n}")), f"{s['mean_tokens']:.0f}", _pct(s["truncated_rate"])])
    return ["<h2>Evaluation</h2>" + _table(
        ["model", "benchmark", "problems", "n", "pass@1 ± s.e.", "maj@n", "mean tokens", "truncated"], rows)]


def _completion_steps(run: Path, per_step: int = 3, ranges: int = 3) -> list[tuple[int, list[dict]]]:
    """A few completions from early, middle and late in the run: ``completions/step_N.parquet`` (all of a
    sampled step's completions, with advantages), else rollouts.jsonl (older runs)."""
    folder = next((f for f in (run / "rl" / "completions", run / "completions") if f.is_dir()), None)
    files = sorted(folder.glob("step_*.parquet")) if folder is not None else []
    if files:
        import pyarrow.parquet as pq

        picks = _spread(files, ranges)
        return [(int(f.stem.split("_")[1]), pq.read_table(f).to_pylist()[:per_step]) for f in picks]
    shown = _rows(run / "rl" / "rollouts.jsonl") or _rows(run / "rollouts.jsonl")
    steps = _spread(sorted({r["step"] for r in shown}), ranges)
    return [(st, [r for r in shown if r["step"] == st][:per_step]) for st in steps]


def _spread(items: list, k: int) -> list:
    """Up to ``k`` items evenly spaced over ``items`` (the first and the last included), in order."""
    if not items:
        return []
    return sorted({items[round(i * (len(items) - 1) / max(1, k - 1))] for i in range(k)}, key=items.index)


def _rollouts(run: Path) -> list[str]:
    steps = _completion_steps(run)
    if not steps:
        return []
    parts = [f"<h2>Sampled rollouts (RL steps {', '.join(str(st) for st, _ in steps)})</h2>"]
    for st, rows in steps:
        parts.append(f"<h3>Step {st}</h3>")
        for r in rows:
            verdict = "correct" if r["correct"] else ("penalised" if r["reward"] < 0 else "wrong")
            extra = (f" ({r.get('penalty_reason') or r['penalty']})" if r.get("penalty") else "") + \
                (f" · advantage {r['advantage']:+.3f}" if r.get("advantage") is not None else "") + \
                (f" · last ids {list(r['last_token_ids'])}" if r.get("last_token_ids") is not None else "")
            parts.append(f"<div class='rollout {verdict}'><div class='meta'>{verdict} · reward "
                         f"{r['reward']:+.0f}{html.escape(extra)} · {r['tokens']} tokens</div>"
                         f"<div class='prompt'>{html.escape(r['prompt'])}</div>"
                         f"<pre>{html.escape(r['response'])}</pre></div>")
    return parts


def write_report(run_dir: str | Path) -> Path:
    """``report.html`` in ``run_dir`` (a demo, SFT or RL run directory): every section whose data is there.
    The page is checked writable before anything is read and replaced atomically (an old report stays whole
    when the disk fills); the PNGs beside it are copies of what it embeds."""
    run = Path(run_dir)
    if not run.is_dir():
        raise FileNotFoundError(f"{run}: not a run directory")
    out = check_output(run / "report.html", what="report")
    parts = _result(run) + _scaling(run) + _training(run) + _evaluations(run) + _rollouts(run)
    return atomic_write_text(out, html_page(f"t1 report — {run.resolve().name}",
                                            "".join(parts) or "<p>No metrics found.</p>"))


def html_page(title: str, body: str) -> str:
    """A self-contained page: ``title`` (escaped here) as its title and heading, then ``body`` (HTML)."""
    title = html.escape(title)
    return (f'<!doctype html><html><head><meta charset="utf-8"><title>{title}</title><style>{CSS}</style></head>'
            f"<body><h1>{title}</h1>{body}</body></html>")
