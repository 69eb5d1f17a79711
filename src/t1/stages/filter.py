"""`t1 filter`: keep the prompts a model finds hard but not hopeless (the paper: 16 samples, pass rate ≤ 0.3).

For each prompt, sample ``samples`` responses, grade them, and keep the prompt when its pass rate lies in
(min_pass, max_pass] (the lower end closed with ``include_min``). Writes ``kept.jsonl`` (rows that
``t1 rl data.source=jsonl`` reads), ``pass_rates.jsonl`` (every prompt with its pass rate) and ``config.yaml``
to ``out`` — all or none of them, after checking before any work that none is an input (``out=D`` with
``data.paths=[D/kept.jsonl]`` would replace the prompts it read by the few it kept).
"""

from __future__ import annotations

import json
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from t1 import config as cfglib
from t1.config import option, require
from t1.data.prompts import PromptDataConfig, load_items
from t1.eval.sample import EvalSettings, sample_and_grade
from t1.io import all_or_nothing, check_output_dir
from t1.model.load import chat_format_of
from t1.rollout import close_engine, open_engine
from t1.rollout.base import check_sampling, check_sequences
from t1.rollout.config import EngineConfig
from t1.runtime.device import quiet_libraries
from t1.runtime.trackers import Tracking, open_trackers
from t1.tasks import get_task
from t1.tasks.base import Task


@dataclass(frozen=True)
class FilterConfig(Tracking):
    model: str = option("", "the model that judges difficulty (the SFT model)")
    out: str = option("runs/filter", "output directory")
    data: PromptDataConfig = option(help="the candidate prompts", factory=PromptDataConfig)
    samples: int = option(16, "samples per prompt (the paper: 16)")
    min_pass: float = option(0.0, "keep prompts whose pass rate is above this (our choice: 0, i.e. solvable)")
    include_min: bool = option(False, "also keep pass rate == min_pass")
    max_pass: float = option(0.3, "... and at most this (the paper: 0.3)")
    temperature: float = option(1.0, "sampling temperature")
    top_p: float = option(1.0, "nucleus sampling")
    max_new_tokens: int = option(1024, "generation budget; a truncated sample counts as wrong")
    prompts_per_batch: int = option(64, "prompts sampled together")
    rollout: EngineConfig = option(help="the sampling engine (the table in t1.rollout.config)",
                                   factory=EngineConfig)
    seed: int = option(0, "sampling seed")

    def validate(self) -> None:
        require(bool(self.model), "model", "is required", self.model)
        require(self.data.reward is None, "data.reward", "t1 filter keeps prompts by the task's verifier; "
                "a supplied reward is t1 rl's", self.data.reward)
        require(self.samples >= 1, "samples", "must be ≥ 1", self.samples)
        check_sampling(self.samples, self.temperature, self.top_p, self.max_new_tokens, n_field="samples")
        require(self.prompts_per_batch >= 1, "prompts_per_batch", "must be ≥ 1", self.prompts_per_batch)
        check_sequences(self.prompts_per_batch, self.samples, "prompts_per_batch", "prompts_per_batch × samples")
        require(0 <= self.min_pass <= 1, "min_pass", "must be in [0, 1]", self.min_pass)
        require(0 <= self.max_pass <= 1, "max_pass", "must be in [0, 1]", self.max_pass)
        require(self.min_pass <= self.max_pass, "min_pass", f"must be ≤ max_pass ({self.max_pass})", self.min_pass)


def pass_rates(engine, tok, items, cfg: FilterConfig, task: Task, progress: bool = True, fmt=None) -> list[float]:
    """Each prompt's share of ``cfg.samples`` responses that end by themselves with a correct answer."""
    s = EvalSettings(n=cfg.samples, temperature=cfg.temperature, top_p=cfg.top_p,
                     max_new_tokens=cfg.max_new_tokens, seed=cfg.seed, engine=cfg.rollout,
                     use_chat_template=cfg.data.use_chat_template, batch_problems=cfg.prompts_per_batch)
    rows = sample_and_grade(engine, tok, task, items, s, desc="filter", progress=progress, fmt=fmt)
    n = cfg.samples
    return [sum(r["correct"] for r in rows[i * n:(i + 1) * n]) / n for i in range(len(items))]


def keep(rate: float, cfg: FilterConfig) -> bool:
    above = rate >= cfg.min_pass if cfg.include_min else rate > cfg.min_pass
    return above and rate <= cfg.max_pass + 1e-12


OUTPUTS = ("config.yaml", "pass_rates.jsonl", "kept.jsonl")  # in the order they are put in place: kept.jsonl last


def run_filter(cfg: FilterConfig, progress: bool = True) -> dict:
    """Score every prompt's pass rate and keep those in the interval; the summary also goes to the trackers."""
    check_output_dir(cfg.out, cfg.model, *cfg.data.paths, files=OUTPUTS)  # before the trackers and the model
    with open_trackers(cfg, cfg.out, "filter") as trackers:
        summary = _filter(cfg, progress)
        trackers.summary(summary)
    return summary


def _filter(cfg: FilterConfig, progress: bool) -> dict:
    quiet_libraries()
    items = load_items(cfg.data)
    engine, tok, _ = open_engine(cfg.rollout, cfg.model, batch=cfg.prompts_per_batch * cfg.samples,
                                 budget=cfg.max_new_tokens)
    try:
        with get_task(cfg.data.task, countdown=cfg.data.countdown, grader=cfg.data.grader) as task:
            fmt = chat_format_of(tok, cfg.model, cfg.data.use_chat_template)
            print(f"filter: {fmt.describe()}", file=sys.stderr)
            rates = pass_rates(engine, tok, items, cfg, task, progress, fmt)
    finally:
        close_engine(engine)
    out = Path(cfg.out)
    kept = [{**it.to_row(), "pass_rate": r} for it, r in zip(items, rates) if keep(r, cfg)]
    with all_or_nothing() as staged:
        staged.write_text(out / "config.yaml", cfglib.dump(cfg))
        staged.write_text(out / "pass_rates.jsonl", "".join(json.dumps({**it.to_row(), "pass_rate": r}) + "\n"
                                                            for it, r in zip(items, rates)))
        staged.write_text(out / "kept.jsonl", "".join(json.dumps(k) + "\n" for k in kept))
    hist = Counter(round(r, 3) for r in rates)
    summary = {"prompts": len(items), "kept": len(kept), "mean_pass_rate": sum(rates) / max(1, len(rates)),
               "all_wrong": hist.get(0.0, 0), "all_right": hist.get(1.0, 0)}
    print(f"filter: kept {len(kept)} of {len(items)} prompts with pass rate in "
          f"{'[' if cfg.include_min else '('}{cfg.min_pass}, {cfg.max_pass}] | mean pass rate "
          f"{summary['mean_pass_rate']:.3f} | all wrong {summary['all_wrong']} | all right {summary['all_right']} "
          f"| wrote {out / 'kept.jsonl'}", file=sys.stderr)
    return summary
