"""`t1 eval`: sample n responses per problem, grade them, and summarise pass@1 ± s.e., pass@k and majority vote."""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from t1.data.sft import prompt_ids
from t1.eval.metrics import majority_correct, pass1_stats, pass_at_k
from t1.io import atomic_write_text
from t1.rollout import SamplingParams, close_engine, open_engine, sample_seed
from t1.tasks.scoring import Item, Scorer


@dataclass(frozen=True)
class EvalSettings:
    n: int = 1
    temperature: float = 1.0
    top_p: float = 1.0
    max_new_tokens: int = 1024
    seed: int = 0
    engine: object = "auto"  # an engine name or a t1.rollout.config.EngineConfig
    use_chat_template: bool = True
    batch_problems: int = 256


def sample_and_grade(engine, tok, task: str, items: list[Item], s: EvalSettings, scorer: Scorer,
                     desc: str = "eval", progress: bool = True) -> list[dict]:
    """One row per (problem, sample): prompt, response, extracted, correct, tokens, finished. ``engine``: a
    sampling engine (:func:`t1.rollout.open_engine`)."""
    params = SamplingParams(s.temperature, s.top_p, s.max_new_tokens)
    rows: list[dict] = []
    bar = tqdm(total=len(items) * s.n, desc=desc, unit="sample", file=sys.stderr, disable=not progress)
    for start in range(0, len(items), s.batch_problems):
        chunk = list(range(start, min(len(items), start + s.batch_problems)))
        prompts = [prompt_ids(tok, items[i].prompt, s.use_chat_template) for i in chunk for _ in range(s.n)]
        seeds = [sample_seed(s.seed, 0, i, k) for i in chunk for k in range(s.n)]
        samples = engine.generate(prompts, seeds, params)
        its = [items[i] for i in chunk for _ in range(s.n)]
        for j, (it, smp, sc) in enumerate(zip(its, samples, scorer([x.text for x in samples], its))):
            rows.append({"id": it.id, "sample": j % s.n, "prompt": it.prompt, "response": smp.text,
                         "extracted": sc.extracted, "correct": bool(sc.correct and smp.finished),
                         "tokens": len(smp.token_ids), "finished": smp.finished, **it.to_row()})
        bar.update(len(samples))
    bar.close()
    return rows


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
        lines.append(f"{name:14s} {s['problems']:8d} {n:4d} {100 * s['pass@1']:8.1f} ± {100 * s['pass@1_stderr']:4.1f} "
                     f"{100 * s.get(f'pass@{n}', s['pass@1']):8.1f} {100 * s[f'maj@{n}']:8.1f} {s['mean_tokens']:8.0f} "
                     f"{100 * s['truncated_rate']:5.1f}%")
    return "\n".join(lines)


def run_eval(model_path: str, benches: list[str], out: str | Path, s: EvalSettings, gpqa_csv: str | None = None,
             data_dir: str | None = None, limit: int = 0, progress: bool = True, countdown_cfg=None) -> dict:
    from t1.eval.benchmarks import load_bench
    from t1.runtime import quiet_libraries

    quiet_libraries()
    engine, tok, kind = open_engine(s.engine, model_path, batch=s.batch_problems * s.n, budget=s.max_new_tokens)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    summaries = {}
    for name in benches:
        task, items = load_bench(name, data_dir, gpqa_csv, countdown_cfg)
        if limit:
            items = items[:limit]
        scorer = Scorer(task, countdown_cfg)
        try:
            rows = sample_and_grade(engine, tok, task, items, s, scorer, desc=name, progress=progress)
        finally:
            scorer.close()
        stem = Path(name).stem
        atomic_write_text(out / f"{stem}.samples.jsonl", "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
        summaries[stem] = summarize(rows, s.n)
    close_engine(engine)
    atomic_write_text(out / "summary.json", json.dumps({"model": str(model_path), "settings": {**s.__dict__, "engine": kind},
                                                        "benchmarks": summaries}, indent=2))
    print(table(summaries), file=sys.stderr)
    return summaries
