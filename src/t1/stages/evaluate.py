"""`t1 eval`: sample n responses per problem, grade them, and summarise pass@1 ± s.e., pass@k and majority vote."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from t1.eval.benchmarks import load_bench
from t1.eval.metrics import majority_correct, pass1_stats, pass_at_k
from t1.eval.sample import EvalSettings, sample_and_grade
from t1.io import atomic_write_text
from t1.rollout import close_engine, open_engine
from t1.runtime.device import quiet_libraries
from t1.tasks import get_task


def summarize(rows: list[dict], n: int) -> dict:
    by_id: dict[str, list[dict]] = {}
    for r in rows:
        by_id.setdefault(r["id"], []).append(r)
    correct = [[r["correct"] for r in group] for group in by_id.values()]
    p1, se = pass1_stats(correct)
    ks = [k for k in (1, 2, 4, 8, 16, 32, 64, 128) if k <= n]
    out = {"problems": len(by_id), "samples_per_problem": n, "pass@1": p1, "pass@1_stderr": se,
           "mean_tokens": sum(r["tokens"] for r in rows) / max(1, len(rows)),
           "truncated_rate": sum(not r["finished"] for r in rows) / max(1, len(rows))}
    for k in ks:
        out[f"pass@{k}"] = sum(pass_at_k(len(c), sum(c), k) for c in correct) / max(1, len(correct))
    out[f"maj@{n}"] = sum(majority_correct([r["extracted"] for r in g], [r["correct"] for r in g])
                          for g in by_id.values()) / max(1, len(by_id))
    out["pass@1"] = p1  # exact mean (pass@1 via the estimator is the same number)
    return out


def table(summaries: dict[str, dict]) -> str:
    lines = [f"{'benchmark':14s} {'problems':>8s} {'n':>4s} {'pass@1':>16s} {'pass@n':>8s} {'maj@n':>8s} "
             f"{'tokens':>8s} {'trunc':>6s}"]
    for name, s in summaries.items():
        n = s["samples_per_problem"]
        lines.append(f"{name:14s} {s['problems']:8d} {n:4d} {100 * s['pass@1']:8.1f} ± "
                     f"{100 * s['pass@1_stderr']:4.1f} {100 * s.get(f'pass@{n}', s['pass@1']):8.1f} "
                     f"{100 * s[f'maj@{n}']:8.1f} {s['mean_tokens']:8.0f} {100 * s['truncated_rate']:5.1f}%")
    return "\n".join(lines)


def run_eval(model_path: str, benches: list[str], out: str | Path, s: EvalSettings, gpqa_csv: str | None = None,
             data_dir: str | None = None, limit: int = 0, progress: bool = True, countdown_cfg=None) -> dict:
    quiet_libraries()
    engine, tok, kind = open_engine(s.engine, model_path, batch=s.batch_problems * s.n, budget=s.max_new_tokens)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    summaries = {}
    for name in benches:
        task_name, items = load_bench(name, data_dir, gpqa_csv, countdown_cfg)
        if limit:
            items = items[:limit]
        with get_task(task_name, countdown=countdown_cfg) as task:
            rows = sample_and_grade(engine, tok, task, items, s, desc=name, progress=progress)
        stem = Path(name).stem
        atomic_write_text(out / f"{stem}.samples.jsonl",
                          "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
        summaries[stem] = summarize(rows, s.n)
    close_engine(engine)
    atomic_write_text(out / "summary.json", json.dumps({"model": str(model_path),
                                                        "settings": {**s.__dict__, "engine": kind},
                                                        "benchmarks": summaries}, indent=2))
    print(table(summaries), file=sys.stderr)
    return summaries
