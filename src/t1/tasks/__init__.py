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

BuiltinTask = Literal["countdown", "math", "choice"]
TASKS: tuple[str, ...] = get_args(BuiltinTask)
TaskName = str  # a built-in name, or user code: package.module:Class or path/file.py:Class (t1.plugins)
TASK_HELP = "how answers are graded: countdown | math | choice, or your Task subclass as package.module:Class"


def check_task_name(name: str, field: str = "task") -> None:
    """A built-in task's name or an import path, else a one-line ConfigError naming ``field`` (the import
    itself happens when the task is made: :func:`get_task`)."""
    from t1.config import ConfigError
    from t1.plugins import is_reference

    if name not in TASKS and not is_reference(name):
        raise ConfigError(f"{field}: must be one of {', '.join(TASKS)} or a Task subclass as "
                          f"package.module:Class (got {name!r})")




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
    math-verify / open-r1 read them) or "strict" (boxed answers only); ``package.module:Class`` (or
    ``file.py:Class``): a :class:`~t1.tasks.base.Task` subclass of yours, made with no arguments. Raises
    ValueError naming the valid names for an unknown one, ConfigError for user code that does not load."""
    if name == "countdown":
        from t1.tasks.countdown import CountdownTask

        return CountdownTask(countdown)
    if name == "math":
        from t1.tasks.math import MathTask

        return MathTask(timeout=timeout, workers=workers, grader=grader)
    if name == "choice":
        from t1.tasks.choice import ChoiceTask

        return ChoiceTask()
    from t1.plugins import is_reference

    if is_reference(name):
        return _user_task(name)
    raise ValueError(f"unknown task {name!r}: use one of {', '.join(TASKS)} or package.module:Class")


def _user_task(ref: str) -> Task:
    from t1.config import ConfigError
    from t1.plugins import load_object
    from t1.tasks.base import Task

    cls = load_object(ref, "task")
    if not (isinstance(cls, type) and issubclass(cls, Task)):
        raise ConfigError(f"task: {ref!r} is not a subclass of t1.tasks.base.Task")
    try:
        return cls()
    except Exception as e:  # the user's constructor
        raise ConfigError(f"task: {ref}() failed: {type(e).__name__}: {e}"[:500]) from None
