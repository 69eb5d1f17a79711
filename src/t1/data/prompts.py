"""Prompts for RL, filtering and evaluation: generated Countdown problems or JSON Lines of problems."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from t1.config import option, require
from t1.io import DataError, fill, iter_jsonl
from t1.tasks.countdown import CountdownConfig, generate, heldout_keys
from t1.tasks.scoring import CHOICE_TEMPLATE, MATH_TEMPLATE, Item, Task


@dataclass(frozen=True)
class PromptDataConfig:
    task: Task = option("countdown", "how answers are graded: countdown | math | choice")
    source: Literal["countdown", "jsonl"] = option("countdown", "generated Countdown problems, or JSON Lines files")
    paths: tuple[str, ...] = option((), "JSON Lines files (source=jsonl)")
    problem_field: str = option("problem", "field with the problem text")
    answer_field: str = option("answer", "field with the gold answer (math: LaTeX; choice: a letter)")
    template: str | None = option(None, "prompt template with {problem}; null = the task's default")
    use_chat_template: bool = option(True, "wrap prompts in the tokenizer's chat template when it has one")
    num_prompts: int = option(4096, "countdown: problems to generate; jsonl: cap (0 = all)")
    seed: int = option(1, "countdown: problem seed (keep it apart from SFT's)")
    exclude_heldout: int = option(500, "countdown: never use the first N held-out evaluation problems")
    countdown: CountdownConfig = option(help="countdown: problem knobs", factory=CountdownConfig)

    def validate(self) -> None:
        require(self.num_prompts >= 0, "num_prompts", "must be ≥ 0", self.num_prompts)
        if self.source == "jsonl":
            require(len(self.paths) > 0, "paths", "source=jsonl needs at least one file", self.paths)
        if self.template is not None:
            require("{problem}" in self.template, "template", "must contain {problem}", self.template)


def _template(cfg: PromptDataConfig) -> str:
    if cfg.template is not None:
        return cfg.template
    return {"math": MATH_TEMPLATE, "choice": CHOICE_TEMPLATE}.get(cfg.task, "{problem}")


def load_items(cfg: PromptDataConfig) -> list[Item]:
    if cfg.source == "countdown":
        if cfg.task != "countdown":
            raise DataError(f"data.source=countdown needs data.task=countdown (got {cfg.task})")
        exclude = heldout_keys(cfg.countdown, cfg.exclude_heldout) if cfg.exclude_heldout else frozenset()
        return [Item(prompt=p.prompt(), numbers=p.numbers, target=p.target, id=f"countdown-{cfg.seed}-{i}",
                     problem=p.prompt())
                for i, p in enumerate(generate(cfg.countdown, cfg.num_prompts, cfg.seed, exclude))]
    template, items = _template(cfg), []
    for path in cfg.paths:
        for line in iter_jsonl(path):
            row, where = line.data, f"{path}:{line.number}"
            if cfg.task == "countdown":
                for name in ("numbers", "target"):
                    if name not in row:
                        raise DataError(f"{where}: missing field '{name}'")
                problem = row.get(cfg.problem_field)
                prompt = problem if isinstance(problem, str) else f"use {' '.join(map(str, row['numbers']))} " \
                                                                  f"to make {row['target']} :"
                items.append(Item(prompt=prompt, numbers=tuple(row["numbers"]), target=int(row["target"]),
                                  id=str(row.get("id", where)), problem=prompt))
            else:
                for name in (cfg.problem_field, cfg.answer_field):
                    if name not in row:
                        raise DataError(f"{where}: missing field '{name}'")
                problem = str(row[cfg.problem_field])
                items.append(Item(prompt=fill(template, problem=problem), answer=str(row[cfg.answer_field]),
                                  id=str(row.get("id", where)), problem=problem))
            if cfg.num_prompts and len(items) >= cfg.num_prompts:
                return items
    if not items:
        raise DataError("no prompts found in " + ", ".join(cfg.paths))
    return items
