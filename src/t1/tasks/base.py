"""What every task is: how a data row becomes a prompt (:class:`Item`), how a response is graded
(:class:`Score`), and the few task-specific strings the stages need — behind one :class:`Task` interface.

The stages hold a :class:`Task` (from :func:`t1.tasks.get_task`) and never ask which one: the RL loop, `t1
filter`, `t1 eval`, `t1 scale` and `t1 grade` all call :meth:`Task.score`; the prompt loaders call
:meth:`Task.item`; the tiny tokenizer asks :meth:`Task.vocabulary`.
"""

from __future__ import annotations

import json
import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from t1.io import DataError, fill


@dataclass(frozen=True)
class Item:
    """What a model is asked plus what grades its answer: ``numbers`` and ``target`` (countdown),
    ``answer`` (math: LaTeX; choice: a letter)."""

    prompt: str
    answer: str | None = None
    numbers: tuple[int, ...] = ()
    target: int | None = None
    id: str = ""
    problem: str = ""  # the raw problem before the prompt template (written back out by `t1 filter`)
    extra: dict = field(default_factory=dict, compare=False)
    row: dict = field(default_factory=dict, compare=False)  # the data row it was read from (for t1.rl.rewards)

    def to_row(self) -> dict:
        """A JSON Lines row that :func:`t1.data.prompts.load_items` reads back."""
        row = {"id": self.id, "problem": self.problem or self.prompt}
        if self.target is not None:
            return {**row, "numbers": list(self.numbers), "target": self.target}
        return {**row, "answer": self.answer}


@dataclass(frozen=True)
class Score:
    """The grade of one response, for every task.

    ``status``: "ok" (graded), "no_answer" (no final answer found), "timeout" or "error" (the grader ran out
    of time or failed; the answer counts as wrong). ``reason``: what the grader says beyond the verdict —
    Countdown's failed rule ("ok" when correct), a math grader's error message; else empty. ``rule``: which
    extraction rule found the answer (math: boxed, answer_phrase, final_expression; see t1.tasks.extract).
    """

    correct: bool
    extracted: str | None
    status: str = "ok"
    reason: str = ""
    rule: str = ""


OnResult = Callable[[int, Score], None]


def shown(value: Any) -> str:
    """A field's value as an error message shows it: as JSON (``null``, ``[1, 2]``, ``""``), cut short."""
    try:
        text = json.dumps(value, ensure_ascii=False)
    except (TypeError, ValueError):
        text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def text_field(value: Any, where: str, name: str) -> str:
    """A row's text field (a problem): a non-empty string, else :class:`DataError` naming ``where`` and
    ``name``."""
    if not isinstance(value, str) or not value.strip():
        raise DataError(f"{where}: field '{name}' must be a non-empty string (got {shown(value)})")
    return value


def answer_text(value: Any, where: str, name: str = "answer") -> str:
    """A gold answer as text: a non-empty string as it is, a finite number written out (12 → "12", 0.5 → "0.5").
    Anything else — null, a list, an object, true/false, "" — raises :class:`DataError` naming ``where`` and
    ``name``: written as text it would be an answer (``"None"``, ``"[1, 2]"``) that no response should match."""
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if number and math.isfinite(value) or isinstance(value, str) and value.strip():
        return str(value)
    raise DataError(f"{where}: field '{name}' must be a non-empty string or a number (got {shown(value)})")


class Task(ABC):
    """One task: its prompts, its grader and its strings. Use as a context manager (or call :meth:`close`)
    when the grader holds resources (the math task's worker processes)."""

    name: str = ""
    template: str = "{problem}"  # the default prompt template; ``{problem}`` is the raw problem
    answer_cue: str = ""  # what `t1 scale` appends to a truncated thinking to force an answer
    gold_fields: tuple[str, ...] = ("answer",)  # the fields of a `t1 grade` row that hold the gold answer

    # ---------------------------------------------------------------------------------------------- prompts

    def item(self, row: dict, where: str, problem_field: str = "problem", answer_field: str = "answer",
             template: str | None = None) -> Item:
        """A JSON Lines row → an :class:`Item`; a missing or ill-typed field (see :meth:`answer`) raises
        :class:`DataError` naming ``where``.

        The prompt is ``template`` (default: the task's) filled with the problem text.
        """
        for name in (problem_field, answer_field):
            if name not in row:
                raise DataError(f"{where}: missing field '{name}'")
        problem = text_field(row[problem_field], where, problem_field)
        return Item(prompt=fill(self.template if template is None else template, problem=problem),
                    answer=self.answer(row[answer_field], where, answer_field), id=str(row.get("id", where)),
                    problem=problem, row=row)

    def answer(self, value: Any, where: str, name: str = "answer") -> str:
        """A row's gold answer as text (:func:`answer_text`: a non-empty string or a number); a task narrows
        it further (multiple choice: one of its letters). The one check of a gold answer, for prompts and
        graded rows alike."""
        return answer_text(value, where, name)

    def gold(self, row: dict, where: str) -> Item:
        """The gold answer of a graded row (`t1 grade`: a response and its gold fields, no problem) as an
        :class:`Item`; a missing or ill-typed field raises :class:`DataError` naming ``where``."""
        self.check_gold_fields(row, where)
        return Item(prompt="", answer=self.answer(row["answer"], where))

    def check_gold_fields(self, row: dict, where: str) -> None:
        for name in self.gold_fields:
            if name not in row:
                raise DataError(f"{where}: missing field '{name}'")

    def vocabulary(self) -> list[str]:
        """The words and symbols, beyond the integers, that this task's prompts and traces use, in a fixed
        order (the tiny word-level tokenizer's vocabulary). Empty for tasks that need a real tokenizer."""
        return []

    # ---------------------------------------------------------------------------------------------- grading

    @abstractmethod
    def score_one(self, response: str, item: Item) -> Score:
        """Grade one response against its item."""

    def score(self, responses: Sequence[str], items: Sequence[Item],
              on_result: OnResult | None = None) -> list[Score]:
        """Grade each response against its item; ``on_result(i, score)`` is called as each one is done."""
        if len(responses) != len(items):
            raise ValueError(f"{len(responses)} responses but {len(items)} items")
        scores = []
        for i, (response, item) in enumerate(zip(responses, items)):
            scores.append(self.score_one(response, item))
            if on_result is not None:
                on_result(i, scores[-1])
        return scores

    def close(self) -> None:
        """Release the grader's resources (a no-op for in-process graders)."""

    def __enter__(self) -> Task:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
