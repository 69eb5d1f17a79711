"""Prompts for RL, filtering and evaluation: generated Countdown problems or JSON Lines of problems."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from t1.config import ConfigError, option, require
from t1.io import DataError, iter_jsonl
from t1.tasks import TASK_HELP, GraderName, TaskName, check_task_name, get_task, grader_option
from t1.tasks.base import Item
from t1.tasks.countdown import CountdownConfig, CountdownTask, generate, heldout_keys

MAX_GENERATED = 1 << 20  # countdown problems generated (and held out): each is a search; 1M take minutes


@dataclass(frozen=True)
class JudgeConfig:
    model: str = option("", "the model name the judge's server serves")
    template: str | None = option(None, "the judge's prompt with {prompt}, {response}, {answer}; null = t1's "
                                        "(asks YES or NO: is the final answer equivalent to the reference?)")
    max_tokens: int = option(8, "tokens the judge may answer with")

    def validate(self) -> None:
        require(self.max_tokens >= 1, "max_tokens", "must be ≥ 1", self.max_tokens)


@dataclass(frozen=True)
class PromptDataConfig:
    task: TaskName = option("countdown", TASK_HELP)
    source: Literal["countdown", "jsonl"] = option("countdown",
                                                   "generated Countdown problems, or JSON Lines files")
    paths: tuple[str, ...] = option((), "JSON Lines files (source=jsonl)")
    problem_field: str = option("problem", "field with the problem text")
    answer_field: str = option("answer", "field with the gold answer (math: LaTeX; choice: a letter)")
    template: str | None = option(None, "prompt template with {problem}; null = the task's default")
    grader: GraderName = grader_option()
    use_chat_template: bool = option(True, "wrap prompts in the tokenizer's chat template when it has one")
    num_prompts: int = option(4096, "countdown: problems to generate (1..1,048,576); jsonl: cap (0 = all)")
    seed: int = option(1, "countdown: problem seed (keep it apart from SFT's)")
    exclude_heldout: int = option(500, "countdown: never use the first N held-out evaluation problems "
                                       "(≤ 1,048,576)")
    countdown: CountdownConfig = option(help="countdown: problem knobs", factory=CountdownConfig)
    reward: str | None = option(None, "t1 rl: a reward you supply — package.module:function or file.py:function "
                                      "(called (prompt, response, row) → float or dict of named floats), "
                                      "http://… (a reward server) or judge:http://…/v1 (an LLM judge); replaces "
                                      "the task's 0/1 score before the penalties (t1.rl.rewards)")
    reward_weights: dict[str, float] = option(
        help="weights of the named rewards (a float is named after the function, weight 1); 'correct' is the "
             "task's verifier, weight 0 unless listed", factory=dict)
    reward_timeout: float = option(30.0, "seconds per reward call; past it the sample's reward is 0, counted")
    reward_workers: int = option(2, "worker processes calling the reward function (or server, or judge)")
    reward_api_key_env: str = option("T1_REWARD_API_KEY", "environment variable holding the reward server's or "
                                                          "judge's API key (sent as a Bearer token, if set)")
    judge: JudgeConfig = option(help="data.reward=judge:<url>: the LLM judge", factory=JudgeConfig)

    def validate(self) -> None:
        check_task_name(self.task)
        require(self.reward_timeout > 0 and self.reward_timeout == self.reward_timeout, "reward_timeout",
                "must be > 0 seconds", self.reward_timeout)
        require(self.reward_workers >= 1, "reward_workers", "must be ≥ 1", self.reward_workers)
        for name, w in self.reward_weights.items():
            require(isinstance(w, (int, float)) and not isinstance(w, bool) and w == w and abs(w) != float("inf"),
                    f"reward_weights.{name}", "must be a finite number", w)
        require(self.num_prompts >= 0, "num_prompts", "must be ≥ 0", self.num_prompts)
        require(0 <= self.exclude_heldout <= MAX_GENERATED, "exclude_heldout",
                f"must be ≥ 0 and ≤ {MAX_GENERATED:,}", self.exclude_heldout)
        if self.source == "jsonl":
            require(len(self.paths) > 0, "paths", "source=jsonl needs at least one file", self.paths)
        else:  # generated one by one: a count past the cap runs for hours; 0 would be no prompts at all
            require(1 <= self.num_prompts <= MAX_GENERATED, "num_prompts",
                    f"must be ≥ 1 and ≤ {MAX_GENERATED:,} problems to generate (source=countdown)",
                    self.num_prompts)
        if self.template is not None:
            require("{problem}" in self.template, "template", "must contain {problem}", self.template)


def check_enough(have: int, need: int, field: str, where: str) -> None:
    """Refuse a step (or batch) of ``need`` prompts (``field``) from data holding only ``have`` (``where``
    says which: ``data.num_prompts``, or the files read): the loop would repeat each prompt within one step
    without a word, so the K samples of a "group" would span copies and the step would see fewer distinct
    prompts than asked. Raised as a :class:`t1.config.ConfigError` (one line, the field and both numbers)."""
    if need > have:
        raise ConfigError(f"{field}: {need:,} is more than the {have:,} prompts in data ({where}): lower {field} "
                          f"to ≤ {have:,} or give more prompts")


def load_items(cfg: PromptDataConfig) -> list[Item]:
    """The prompts: generated Countdown problems (outside the held-out set), or every row of the JSON Lines
    files made into an :class:`Item` by the task (:meth:`~t1.tasks.base.Task.item`), up to ``num_prompts``."""
    if cfg.source == "countdown":
        if cfg.task != "countdown":
            raise DataError(f"data.source=countdown needs data.task=countdown (got {cfg.task})")
        task = CountdownTask(cfg.countdown)
        exclude = heldout_keys(cfg.countdown, cfg.exclude_heldout) if cfg.exclude_heldout else frozenset()
        return [task.item_from_problem(p, f"countdown-{cfg.seed}-{i}")
                for i, p in enumerate(generate(cfg.countdown, cfg.num_prompts, cfg.seed, exclude))]
    items = []
    with get_task(cfg.task, countdown=cfg.countdown) as task:
        for path in cfg.paths:
            for line in iter_jsonl(path):
                items.append(task.item(line.data, f"{path}:{line.number}", cfg.problem_field, cfg.answer_field,
                                       cfg.template))
                if cfg.num_prompts and len(items) >= cfg.num_prompts:
                    return items
    if not items:
        raise DataError("no prompts found in " + ", ".join(cfg.paths))
    return items
