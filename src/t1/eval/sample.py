"""Sample n responses per problem with any engine and grade them: the rows that `t1 eval`, `t1 filter` and
`t1 scale` summarise."""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass

from tqdm import tqdm

from t1.chat import ChatFormat, chat_format
from t1.config import require
from t1.eval.benchmarks import for_sample
from t1.rollout.base import SamplingParams, check_sampling, sample_seed
from t1.tasks.base import Item, Task


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

    def __post_init__(self):
        check_sampling(self.n, self.temperature, self.top_p, self.max_new_tokens)
        require(self.batch_problems >= 1, "batch_problems", "must be ≥ 1", self.batch_problems)


def sample_and_grade(engine, tok, task: Task, items: list[Item], s: EvalSettings, desc: str = "eval",
                     progress: bool = True, fmt: ChatFormat | None = None) -> list[dict]:
    """One row per (problem, sample): prompt, response, extracted, correct, tokens, finished. ``engine``: a
    sampling engine (:func:`t1.rollout.open_engine`); ``task`` grades the responses; ``fmt``: the model's chat
    format (:func:`t1.chat.chat_format` with its path; default: the tokenizer's alone)."""
    fmt = fmt or chat_format(tok, (), s.use_chat_template)
    params = SamplingParams(s.temperature, s.top_p, s.max_new_tokens, fmt.stop_ids)
    rows: list[dict] = []
    bar = tqdm(total=len(items) * s.n, desc=desc, unit="sample", file=sys.stderr, disable=not progress,
               dynamic_ncols=True)
    start_time, tokens, correct = time.perf_counter(), 0, 0
    for start in range(0, len(items), s.batch_problems):
        chunk = list(range(start, min(len(items), start + s.batch_problems)))
        its = [for_sample(items[i], s.seed, k) for i in chunk for k in range(s.n)]  # choice: options reshuffled
        prompts = [fmt.prompt_ids(tok, it.prompt) for it in its]
        seeds = [sample_seed(s.seed, 0, i, k) for i in chunk for k in range(s.n)]
        samples = engine.generate(prompts, seeds, params)
        for j, (it, smp, sc) in enumerate(zip(its, samples, task.score([x.text for x in samples], its))):
            order = {"option_order": it.extra["option_order"]} if "option_order" in it.extra else {}
            rows.append({"id": it.id, "sample": j % s.n, "prompt": it.prompt, "response": smp.text,
                         "extracted": sc.extracted, "rule": sc.rule, "correct": bool(sc.correct and smp.finished),
                         "tokens": len(smp.token_ids), "finished": smp.finished, **it.to_row(), **order})
        bar.update(len(samples))
        tokens += sum(len(x.token_ids) for x in samples)
        correct += sum(r["correct"] for r in rows[-len(samples):])
        bar.set_postfix(acc=f"{correct / len(rows):.3f}",
                        tok_s=f"{tokens / max(1e-9, time.perf_counter() - start_time):,.0f}")
    bar.close()
    return rows
