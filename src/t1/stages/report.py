"""`t1 report RUN_DIR`: one self-contained HTML page (PNGs embedded, and also written beside it).

Works on a single SFT or RL run directory (``metrics.jsonl``, ``completions/`` or ``rollouts.jsonl``) or on a
pipeline's directory (``sft/``, ``sft_direct/``, ``rl/``, ``eval/``); sections without data are left out. The
demo puts its result and checks first (t1.pipelines.demo.report); the page's pieces are t1.eval.page's.
"""

from __future__ import annotations

import html
from pathlib import Path

from t1.eval.metrics import truncated
from t1.eval.page import draw_accuracy, html_page, img, pct, pyplot, save_png, table
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


def plot_sft(runs: dict[str, list[dict]], path: Path) -> Path:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 3.6))
    for label, rows in runs.items():
        ax.plot([r["step"] for r in rows], [r["loss"] for r in rows], label=label)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss (response tokens)")
    ax.set_yscale("log")
    ax.grid(alpha=0.3)
    ax.legend()
    ax.set_title("SFT loss")
    return save_png(fig, path)


def plot_rl(rows: list[dict], path: Path) -> Path:
    plt = pyplot()
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
        elif key == "response_length":  # finished responses apart: RL shortening by cutting less shows here
            ax.plot(steps, [r[key] for r in rows], label="all")
            if any("completions/mean_terminated_length" in r for r in rows):
                ax.plot(steps, [r.get("completions/mean_terminated_length", float("nan")) for r in rows],
                        label="finished by themselves")
                ax.legend(fontsize=7)
        else:
            ax.plot(steps, [r[key] for r in rows])
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("step", fontsize=8)
        ax.grid(alpha=0.3)
    return save_png(fig, path)




def plot_budgets(curves: dict[str, list[dict]], path: Path) -> Path:
    """Per model, accuracy (± one standard error) and the truncated share against the thinking budget: where a
    model still truncates, part of a gap between models is finishing inside the budget, not reasoning."""
    plt = pyplot()
    fig, (acc, cut) = plt.subplots(1, 2, figsize=(12, 4), sharex=True)  # the same budget axis and ticks
    colours = draw_accuracy(acc, curves)
    acc.set_title("accuracy (pass@1)", fontsize=10)
    for label, pts in curves.items():
        if all(truncated(p) is not None for p in pts):
            cut.plot([p["budget"] for p in pts], [100 * truncated(p) for p in pts], marker="o", label=label,
                     color=colours[label])
    cut.set_xlabel("thinking budget (tokens)")
    cut.set_ylabel("truncated (%)")
    cut.set_title("truncated share (cut at the budget)", fontsize=10)
    cut.grid(alpha=0.3)
    if cut.get_legend_handles_labels()[0]:  # curves from before finished_rate: an empty truncation panel
        cut.legend(fontsize=8)
    return save_png(fig, path)


def _scaling(run: Path) -> list[str]:
    if not (run / "eval" / "scaling.json").exists():
        return []
    curves = read_json(run / "eval" / "scaling.json")["curves"]
    budgets = [p["budget"] for p in next(iter(curves.values()))]
    png = plot_budgets(curves, run / "report_budgets.png")
    return ["<h2>Inference scaling</h2>",
            "<p>Accuracy of a single generation whose thinking is cut at each budget; a cut response is "
            "completed by appending the answer cue and letting the same model answer (no verifier, no "
            "voting) — the paper's Figure 1 — and beside it the share of responses cut at each budget.</p>"
            + img(png, "accuracy and truncated share vs thinking budget"),
            table(["model"] + [str(x) for x in budgets], [
                [lab] + [f"{pct(p['accuracy'])} ± {100 * p['stderr']:.1f}" for p in pts]
                for lab, pts in curves.items()])] + _truncation(curves, budgets)


def _truncation(curves: dict[str, list[dict]], budgets: list[int]) -> list[str]:
    """The share of each model's responses cut at each budget (curves from before ``finished_rate``: none)."""
    if not all("finished_rate" in p for pts in curves.values() for p in pts):
        return []
    return ["<p>Truncated: the share of responses not finished within the budget (cut there, they are graded "
            "on an answer they already state, else on a forced one).</p>",
            table(["model"] + [str(x) for x in budgets], [[lab] + [pct(truncated(p)) for p in pts]
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
        parts.append("<h2>SFT</h2>" + img(plot_sft(sft_runs, run / "report_sft.png"), "SFT loss"))
    if rl_rows:
        parts.append("<h2>RL training</h2>" + img(plot_rl(rl_rows, run / "report_rl.png"), "RL curves"))
        first, last = rl_rows[: max(1, len(rl_rows) // 10)], rl_rows[-max(1, len(rl_rows) // 10):]
        avg = lambda rs, k: sum(r[k] for r in rs) / len(rs)  # noqa: E731
        parts.append(table(["metric", "first 10% of steps", "last 10% of steps"], [
            [k, f"{avg(first, k):.4f}", f"{avg(last, k):.4f}"]
            for k in ("reward", "accuracy", "response_length", "completions/mean_terminated_length", "entropy",
                      "kl", "penalty_truncated") if k in rl_rows[0]]))
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
                         f"{pct(s['pass@1'])} ± {100 * s['pass@1_stderr']:.1f}",
                         pct(s.get(f"maj@{n}")), f"{s['mean_tokens']:.0f}", pct(s["truncated_rate"])])
    return ["<h2>Evaluation</h2>" + table(
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


def write_report(run_dir: str | Path, head: list[str] | None = None) -> Path:
    """``report.html`` in ``run_dir`` (an SFT or RL run directory, or a pipeline's directory holding ``sft/``,
    ``rl/``, ``eval/``): every section whose data is there, after ``head`` (HTML parts a pipeline puts first:
    the demo's result and checks). The page is checked writable before anything is read and replaced
    atomically (an old report stays whole when the disk fills); the PNGs beside it are copies of what it
    embeds."""
    run = Path(run_dir)
    if not run.is_dir():
        raise FileNotFoundError(f"{run}: not a run directory")
    out = check_output(run / "report.html", what="report")
    parts = [*(head or []), *_scaling(run), *_training(run), *_evaluations(run), *_rollouts(run)]
    return atomic_write_text(out, html_page(f"t1 report — {run.resolve().name}",
                                            "".join(parts) or "<p>No metrics found.</p>"))
