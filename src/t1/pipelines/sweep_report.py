"""``OUT/sweep.html`` for a `t1 sweep` directory (from its ``sweep.json`` and the runs' ``metrics.jsonl``): one
self-contained page, its PNGs embedded (and written beside it) — the comparison table (mean ± std over seeds,
min–max), accuracy vs thinking budget per value (error bars: std over seeds), and, for training stages,
reward, accuracy, response length (RL) or loss (SFT) vs step per value (the mean over seeds, a band of ± one
std). `t1 sweep` writes it; `t1 report OUT` rewrites it.
"""

from __future__ import annotations

import html
import re
import statistics
from pathlib import Path

from t1.eval.page import html_page, img, pyplot, save_png, table
from t1.io import atomic_write_text, check_output, read_json, read_log
from t1.stages.scale import plot as plot_budgets

STEP_PANELS = [("reward", "reward"), ("accuracy", "accuracy"), ("response_length", "response length (tokens)"),
               ("loss", "loss")]
_BUDGET_KEY = re.compile(r"(?:(.+) )?accuracy@(\d+)")


def budget_curves(result: dict) -> dict[str, list[dict]]:
    """{series: [{budget, accuracy, stderr}]}: each value's mean accuracy per budget, ``stderr`` holding the
    std over seeds (the error bar); one series per value (per value and model when a scale sweep has several)."""
    curves: dict[str, list[dict]] = {}
    for p in result["points"]:
        for key, s in p["summary"].items():
            m = _BUDGET_KEY.fullmatch(key)
            if m:
                name = p["label"] + (f" ({m.group(1)})" if m.group(1) else "")
                curves.setdefault(name, []).append({"budget": int(m.group(2)), "accuracy": s["mean"],
                                                    "stderr": s["std"]})
    return {k: sorted(v, key=lambda x: x["budget"]) for k, v in curves.items()}


def step_curves(out: Path, point: dict, key: str) -> tuple[list[int], list[float], list[float]]:
    """(steps, mean, std) of ``key`` over a value's seeds, at the steps every seed logged."""
    per_seed = []
    for run in point["runs"]:
        rows = read_log(out / run["dir"] / "metrics.jsonl")
        per_seed.append({r["step"]: r[key] for r in rows if isinstance(r.get(key), (int, float))})
    steps = sorted(set.intersection(*(set(d) for d in per_seed))) if per_seed else []
    vals = [[d[s] for d in per_seed] for s in steps]
    return (steps, [statistics.fmean(v) for v in vals],
            [statistics.stdev(v) if len(v) > 1 else 0.0 for v in vals])


def plot_steps(out: Path, result: dict, key: str, title: str, path: Path) -> Path | None:
    """``key`` vs step, one line per value (mean over seeds) with a ± std band; None if no run logged it."""
    series = [(p["label"], *step_curves(out, p, key)) for p in result["points"]]
    series = [s for s in series if s[1]]
    if not series:
        return None
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 3.8))
    for label, steps, mean, std in series:
        line, = ax.plot(steps, mean, label=label)
        ax.fill_between(steps, [m - s for m, s in zip(mean, std)], [m + s for m, s in zip(mean, std)],
                        color=line.get_color(), alpha=0.2, linewidth=0)
    ax.set_xlabel("step")
    ax.set_ylabel(title)
    ax.set_title(f"{title} vs step (mean ± std over seeds)", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return save_png(fig, path)


def _cell(key: str, s: dict | None) -> str:
    if s is None:
        return "—"
    pct = "accuracy" in key or "pass@" in key or key.endswith("_rate")
    f = (lambda x: f"{100 * x:.1f}") if pct else (lambda x: f"{x:.4g}")
    return f"{f(s['mean'])} ± {f(s['std'])} [{f(s['min'])}–{f(s['max'])}]{'%' if pct else ''}"


def _summarytable(result: dict) -> str:
    keys = list(dict.fromkeys(k for p in result["points"] for k in p["summary"]))
    return table(["value", "seeds"] + [k.replace("_", " ") for k in keys],
                  [[p["label"], ", ".join(str(r["seed"]) for r in p["runs"])]
                   + [_cell(k, p["summary"].get(k)) for k in keys] for p in result["points"]])


def write_sweep_report(out_dir: str | Path) -> Path:
    """``sweep.html`` in a sweep directory (one holding ``sweep.json``), checked writable before anything is
    read and replaced atomically."""
    out = Path(out_dir)
    if not (out / "sweep.json").exists():
        raise FileNotFoundError(f"{out}: no sweep.json (not a t1 sweep directory)")
    path = check_output(out / "sweep.html", what="report")
    result = read_json(out / "sweep.json")
    fields = ", ".join(result.get("fields") or []) or "seeds only"
    seeds = max((len(p["runs"]) for p in result["points"]), default=0)
    parts = [f"<p>t1 {html.escape(result['stage'])} over {html.escape(fields)}"
             f"{' from ' + html.escape(result['config']) if result.get('config') else ''}; {seeds} seed(s) per "
             "value. Training numbers are means over the last 10% of logged steps; ± is the standard deviation "
             "over seeds, [min–max] the range.</p>", _summarytable(result)]
    curves = budget_curves(result)
    if curves:
        png = plot_budgets(curves, out / "sweep_budgets.png",
                           f"accuracy vs thinking budget (error bars: std over {seeds} seed(s))")
        parts.append("<h2>Accuracy vs thinking budget</h2>" + img(png, "accuracy vs thinking budget"))
    rl = any("reward" in p["summary"] for p in result["points"])  # an RL run's loss is no measure of it
    for key, title in [(k, t) for k, t in STEP_PANELS if k != "loss" or not rl]:
        png = plot_steps(out, result, key, title, out / f"sweep_{key}.png")
        if png is not None:
            parts.append(f"<h2>{html.escape(title[0].upper() + title[1:])} vs step</h2>" + img(png, title))
    return atomic_write_text(path, html_page(f"t1 sweep — {out.resolve().name}", "".join(parts)))
