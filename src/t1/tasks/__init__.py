"""Tasks: prompts, answer extraction and rewards (Countdown, math, multiple choice) behind one interface.

:func:`get_task` turns a task name into a :class:`~t1.tasks.base.Task`; the stages hold that object and never
ask which task it is. The task modules are imported when a task is asked for, so importing this package stays
cheap (the math grader's worker processes preload it).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal, get_args

from t1.tasks.extract import GraderName as GraderName  # re-exported: the configs name graders by it

if TYPE_CHECKING:
    from t1.tasks.base import Task
    from t1.tasks.countdown import CountdownConfig

TaskName = Literal["countdown", "math", "choice"]
TASKS: tuple[str, ...] = get_args(TaskName)




def grader_option():
    """The ``grader`` field of every config that grades math (rl/filter data, eval, scale)."""
    from t1.config import option

    return option("default", "how a math answer is found: default (the final boxes, an answer phrase, a final "
                             "expression — as math-verify and open-r1 read them) | strict (boxed answers only)")


def get_task(name: str, *, countdown: CountdownConfig | None = None, timeout: float = 5.0,
             workers: int | None = None, grader: str = "default") -> Task:
    """The task called ``name``. ``countdown``: the Countdown rules (default :class:`CountdownConfig`());
    ``timeout`` and ``workers``: the math grader's time limit per check and its processes (default: every
    core); ``grader``: how a math answer is found — "default" (boxes, an answer phrase, a final expression, as
    math-verify / open-r1 read them) or "strict" (boxed answers only). Raises ValueError naming the valid names
    for an unknown one."""
    if name == "countdown":
        from t1.tasks.countdown import CountdownTask

        return CountdownTask(countdown)
    if name == "math":
        from t1.tasks.math import MathTask

        return MathTask(timeout=timeout, workers=workers, grader=grader)
    if name == "choice":
        from t1.tasks.choice import ChoiceTask

        return ChoiceTask()
    raise ValueError(f"unknown task {name!r}: use one of {', '.join(TASKS)}")
