"""`t1 eval`: sample n responses per problem, grade them, and summarise pass@1 ± s.e., pass@k and majority vote."""

from __future__ import annotations

import json
import sys
from dataclasses import asdict, dataclass, replace
from itertools import islice
from pathlib import Path

from t1.config import option, require
from t1.data import DATA_DIR
from t1.eval.benchmarks import FILES, load_bench
from t1.eval.metrics import majority_correct, pass1_stats, pass_at_k
from t1.eval.protocols import SamplingProtocol, describe, samples_for
from t1.eval.sample import EvalSettings, sample_and_grade
from t1.io import all_or_nothing, check_output_dir, iter_jsonl
from t1.model.load import chat_format_of
from t1.rollout import close_engine, open_engine
from t1.rollout.base import check_sampling, check_sequences
from t1.rollout.config import EngineConfig
from t1.runtime.device import quiet_libraries
from t1.runtime.trackers import Trackers, Tracking, open_trackers
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


@dataclass(frozen=True)
class EvalConfig(SamplingProtocol, Tracking):
    """`t1 eval`: ``t1 eval [CONFIG.yaml] model=M bench=[math500,aime24] [preset=r1] [key=value …]``; the
    protocol fields (preset, n, temperature, …) are :class:`t1.eval.protocols.SamplingProtocol`'s."""

    model: str | None = option(None, "checkpoint path or hub name (required)")
    bench: tuple[str, ...] = option(("math500",), "benchmarks: math500, aime24, aime25, amc23, omni_math, "
                                                  "omni500, gpqa, countdown, or *.jsonl paths")
    out: str = option("runs/eval", "output directory: summary.json and <bench>.samples.jsonl")
    max_new_tokens: int = option(1024, "thinking + answer budget per sample (≤ 1,048,576, and below the model's "
                                       "context: checked before the weights load)")
    use_chat_template: bool = option(True, "wrap prompts in the tokenizer's chat template when it has one")
    batch_problems: int = option(256, "problems sampled together (× n sequences ≤ 65,536: "
                                      "t1.rollout.base.MAX_SEQUENCES)")
    rollout: EngineConfig = option(help="the sampling engine and its settings", factory=EngineConfig)

    def validate(self) -> None:
        super().validate()
        require(bool(self.model), "model", "is required: a checkpoint path or hub name", self.model)
        require(len(self.bench) > 0, "bench", "give at least one benchmark", self.bench)
        check_sampling(max(1, self.n), self.temperature, self.top_p, self.max_new_tokens)
        require(self.batch_problems >= 1, "batch_problems", "must be ≥ 1", self.batch_problems)
        n = max(samples_for(self.n, b) for b in self.bench)  # what run_eval opens the engine for
        check_sequences(self.batch_problems, n, "batch_problems", f"batch_problems × n={n:,} samples per problem")

    def settings(self) -> EvalSettings:
        return EvalSettings(n=max(1, self.n), temperature=self.temperature, top_p=self.top_p,
                            max_new_tokens=self.max_new_tokens, seed=self.seed, engine=self.rollout,
                            use_chat_template=self.use_chat_template, batch_problems=self.batch_problems)


def evaluate(cfg: EvalConfig, progress: bool = True) -> dict:
    """`t1 eval` on a loaded config: the protocol printed, then :func:`run_eval` with n per benchmark."""
    if cfg.preset != "none" or cfg.n == 0:
        print(f"eval: {describe(cfg, list(cfg.bench))}", file=sys.stderr)
    samples = {b: samples_for(cfg.n, b) for b in cfg.bench}
    check_eval_output(cfg.out, cfg.model, list(cfg.bench), cfg.gpqa_csv, cfg.data_dir)  # before the trackers
    with open_trackers(cfg, cfg.out, "eval") as trackers:  # a tracker that cannot start stops us before sampling
        summaries = run_eval(cfg.model, list(cfg.bench), cfg.out, cfg.settings(), cfg.gpqa_csv, cfg.data_dir,
                             cfg.limit, progress=progress, samples=samples,
                             protocol={"preset": cfg.preset, "grader": cfg.grader, "task": cfg.task})
        report_eval(trackers, summaries, cfg.out)
    return summaries


def report_eval(trackers: Trackers, summaries: dict[str, dict], out: str | Path, rows: int = 32) -> None:
    """Send eval results to the trackers: every number of each benchmark's summary (``<bench>/pass@1`` …) and
    the first ``rows`` graded samples of each as the table ``samples/<bench>``."""
    trackers.summary(summaries)
    for stem in summaries:
        path = Path(out) / f"{stem}.samples.jsonl"
        if trackers.active and path.exists():  # the first rows only: a file of 64 samples per problem is large
            trackers.table(f"samples/{stem}", [line.data for line in islice(iter_jsonl(path), rows)], 0)


def check_eval_output(out: str | Path, model: str, benches: list[str], gpqa_csv: str | None = None,
                      data_dir: str | None = None) -> Path:
    """Before any model is loaded: ``out`` can take summary.json and each benchmark's samples, and none of them
    (nor ``out`` itself) is an input — the model, a benchmark's file, the GPQA CSV."""
    inputs = [model, gpqa_csv, *(b for b in benches if b.endswith(".jsonl")),
              *(Path(data_dir or DATA_DIR) / FILES[b] for b in benches if b in FILES)]
    files = [f"{Path(b).stem}.samples.jsonl" for b in benches] + ["summary.json"]
    return check_output_dir(out, *inputs, files=files)


def run_eval(model_path: str, benches: list[str], out: str | Path, s: EvalSettings, gpqa_csv: str | None = None,
             data_dir: str | None = None, limit: int = 0, progress: bool = True, countdown_cfg=None,
             samples: dict[str, int] | None = None, protocol: dict | None = None) -> dict:
    """Sample and grade ``benches``; ``samples``: n per benchmark (default ``s.n``); writes summary.json (with
    the settings, ``protocol`` and n per benchmark) and <bench>.samples.jsonl under ``out``.

    The files are one result, written all or nothing (:func:`t1.io.all_or_nothing`, summary.json last): a
    failure — a full disk, a benchmark that cannot be read after another was sampled — leaves the previous
    result in ``out`` whole, never new samples beside an old summary."""
    out = check_eval_output(out, model_path, benches, gpqa_csv, data_dir)
    quiet_libraries()
    samples = {b: (samples or {}).get(b, s.n) for b in benches}
    problems = min(s.batch_problems, limit) if limit else s.batch_problems
    engine, tok, kind = open_engine(s.engine, model_path, batch=problems * max(samples.values()),
                                    budget=s.max_new_tokens)
    fmt = chat_format_of(tok, model_path, s.use_chat_template)
    print(f"eval: {fmt.describe()}", file=sys.stderr)
    summaries = {}
    with all_or_nothing() as staged:
        try:
            for name in benches:
                task_name, items = load_bench(name, data_dir, gpqa_csv, countdown_cfg,
                                              task=(protocol or {}).get("task"))
                items = items[:limit] if limit else items
                bench_s = replace(s, n=samples[name])
                grader = (protocol or {}).get("grader", "default")
                with get_task(task_name, countdown=countdown_cfg, grader=grader) as task:
                    rows = sample_and_grade(engine, tok, task, items, bench_s, desc=name, progress=progress,
                                            fmt=fmt)
                stem = Path(name).stem
                staged.write_text(out / f"{stem}.samples.jsonl",
                                  "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
                summaries[stem] = summarize(rows, bench_s.n)
        finally:
            close_engine(engine)
        settings = {**asdict(s), "engine": kind, "samples_per_benchmark": samples, **(protocol or {})}
        staged.write_text(out / "summary.json", json.dumps({"model": str(model_path), "settings": settings,
                                                            "benchmarks": summaries}, indent=2, default=str))
    print(table(summaries), file=sys.stderr)
    return summaries
