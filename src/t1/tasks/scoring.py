"""Prompts for RL and evaluation, and their 0/1 scores, for every task behind one interface.

An :class:`Item` is what a model is asked plus what grades its answer: ``numbers`` and ``target``
(countdown), ``answer`` (math: LaTeX; choice: a letter). :class:`Scorer` grades a batch of responses against
their items; math goes through a persistent :class:`~t1.tasks.math.MathGrader` pool (time-bounded).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from t1.tasks import countdown
from t1.tasks.choice import grade_choice

Task = Literal["countdown", "math", "choice"]

MATH_TEMPLATE = "{problem}\nPlease reason step by step, and put your final answer within \\boxed{}."
CHOICE_TEMPLATE = ("{problem}\nThink step by step, then give your final answer on its own line as "
                   "'ANSWER: X' where X is one of the letters.")


@dataclass(frozen=True)
class Item:
    prompt: str
    answer: str | None = None
    numbers: tuple[int, ...] = ()
    target: int | None = None
    id: str = ""
    problem: str = ""  # the raw problem before the prompt template (written back out by `t1 filter`)
    extra: dict = field(default_factory=dict, compare=False)

    def to_row(self) -> dict:
        """A JSON Lines row that :func:`t1.data.prompts.load_items` reads back."""
        row = {"id": self.id, "problem": self.problem or self.prompt}
        if self.target is not None:
            return {**row, "numbers": list(self.numbers), "target": self.target}
        return {**row, "answer": self.answer}


@dataclass(frozen=True)
class Score:
    correct: bool
    extracted: str | None
    status: str = "ok"


class Scorer:
    def __init__(self, task: Task, countdown_cfg: countdown.CountdownConfig | None = None,
                 timeout: float = 5.0, workers: int | None = None):
        if task not in ("countdown", "math", "choice"):
            raise ValueError(f"unknown task {task!r}")
        self.task, self.countdown_cfg = task, countdown_cfg or countdown.CountdownConfig()
        self._math = None
        if task == "math":
            from t1.tasks.math import MathGrader

            self._math = MathGrader(workers=workers, timeout=timeout)

    def __call__(self, responses: list[str], items: list[Item]) -> list[Score]:
        if self.task == "countdown":
            out = []
            for r, it in zip(responses, items):
                v = countdown.verify(r, it.numbers, it.target, self.countdown_cfg)
                out.append(Score(v.correct, v.extracted))
            return out
        if self.task == "choice":
            return [Score(*grade_choice(r, it.answer or "")) for r, it in zip(responses, items)]
        grades = self._math.grade(responses, [it.answer or "" for it in items])
        return [Score(g.correct, g.extracted, g.status) for g in grades]

    def close(self) -> None:
        if self._math is not None:
            self._math.close()
            self._math = None
