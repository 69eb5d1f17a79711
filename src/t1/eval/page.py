"""The pieces of t1's HTML reports (`t1 report`, the demo's, the sweep's): matplotlib figures saved as PNGs,
embedded images, tables and the self-contained page around them. One look for every report; no report reaches
into another's helpers."""

from __future__ import annotations

import base64
import html
from pathlib import Path

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


def pyplot():
    """matplotlib's pyplot on the file-only backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def draw_accuracy(ax, curves: dict[str, list[dict]]) -> dict[str, str]:
    """Accuracy (%) ± one standard error against the thinking budget, one line per model, on ``ax`` (a log₂
    budget axis ticked at the budgets): the paper's Figure 1 as `t1 scale`, the reports and the sweep draw it.
    Returns each model's colour, for panels beside it."""
    import matplotlib.ticker

    colours = {}
    for label, pts in curves.items():
        bars = ax.errorbar([p["budget"] for p in pts], [100 * p["accuracy"] for p in pts],
                           yerr=[100 * p["stderr"] for p in pts], marker="o", capsize=3, label=label)
        colours[label] = bars.lines[0].get_color()
    ax.set_xscale("log", base=2)
    ax.set_xticks([p["budget"] for p in next(iter(curves.values()))])
    ax.get_xaxis().set_major_formatter(matplotlib.ticker.ScalarFormatter())
    ax.set_xlabel("thinking budget (tokens)")
    ax.set_ylabel("accuracy (%)")
    ax.grid(alpha=0.3)
    ax.legend()
    return colours


def save_png(fig, path: Path) -> Path:
    """``fig`` as the PNG ``path``, then closed; a failed write is an OSError naming ``path`` (matplotlib's
    names none)."""
    fig.tight_layout()
    try:
        fig.savefig(path, dpi=110)
    except OSError as e:
        raise OSError(e.errno, e.strerror or str(e), str(path)) from None
    finally:
        pyplot().close(fig)
    return path


def img(path: Path, alt: str) -> str:
    """The PNG at ``path`` embedded in the page (base64), with its ``alt`` text."""
    data = base64.b64encode(path.read_bytes()).decode()
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


def table(header: list, rows: list[list]) -> str:
    """An HTML table; every cell is escaped."""
    th = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><thead><tr>{th}</tr></thead><tbody>{body}</tbody></table>"


def pct(x) -> str:
    """A fraction as a percentage with one decimal; None as a dash."""
    return "—" if x is None else f"{100 * x:.1f}%"


def html_page(title: str, body: str) -> str:
    """A self-contained page: ``title`` (escaped here) as its title and heading, then ``body`` (HTML)."""
    title = html.escape(title)
    return (f'<!doctype html><html><head><meta charset="utf-8"><title>{title}</title><style>{CSS}</style></head>'
            f"<body><h1>{title}</h1>{body}</body></html>")
