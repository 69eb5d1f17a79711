"""Math answers: extract the final answer from a response and grade it against a gold answer with math-verify.

* Extraction: the last ``\\boxed{...}``; failing that, an explicit "final answer is X" / "ANSWER: X" line.
  Never "the last number in the text", which grades guesses.
* Gold answers from the data files are bare LaTeX (``\\frac{1}{2}``, ``10, 4, 2``). math-verify reads a bare
  string by falling back to its last number, so ``10, 4, 2`` would match ``4, 12, 2``; :func:`wrap_gold`
  puts it in ``$...$`` first.
* Time: math-verify bounds its own work with ``signal.alarm``, which fails outside a main thread. Grading
  here always runs in worker processes of a :class:`~t1.pool.DeadlinePool`, which kills a check that runs
  past ``timeout`` seconds and reports it as timed out — from any calling thread — and uses every core.
  Extraction is linear in the response's length and runs in the worker too, which notes the answer it found
  to the parent (:func:`t1.pool.note`): a check stopped later still shows it, and the parent never redoes
  any of the work (a timed-out check whose extraction itself overran — a response of many megabytes of
  braces — shows none).

:class:`MathTask` is the task behind the :class:`~t1.tasks.base.Task` interface; it starts its
:class:`MathGrader` on the first batch it grades.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Callable, Sequence

from t1.pool import DeadlinePool, Outcome, check_limits, note
from t1.tasks.base import Item, OnResult, Score, Task
from t1.tasks.boxed import last_boxed

MAX_EXTRACTED = 1000  # characters of an extracted answer kept; longer is garbage, not an answer

# The answer lines: each match runs to the end of its line (greedy, so linear: no two adjacent ``\s*`` or lazy
# groups for the engine to try against each other on hostile whitespace); _line_answer trims it.
_FINAL = re.compile(r"(?:final answer|the answer)\s*(?:is|:)\s*(?::\s*)?(.+)$", re.I | re.M)
_MATH_MODE = re.compile(r"(?<!\\)\$|\\\(|\\\[")
_ANSWER_LINE = re.compile(r"^[^\S\n]*\**answer\**\s*:\s*(.+)$", re.I | re.M)
TAIL = 4000  # characters at the end of a response searched for an answer line


def _line_answer(line: str, full_stop: bool) -> str:
    """The answer on an answer line: without spaces and ``$`` around it, and with ``full_stop`` without the
    sentence's closing full stop."""
    line = line.rstrip()
    if full_stop and line.endswith(".") and len(line) > 1:
        line = line[:-1]
    return line.strip().strip("$").strip()


def extract_answer(response: str) -> str | None:
    """The final answer in a response, or None if it gives none. Linear in the length of the response."""
    if not isinstance(response, str):
        return None
    found = last_boxed(response)
    if found is None:
        for pattern, full_stop in ((_ANSWER_LINE, False), (_FINAL, True)):
            matches = pattern.findall(response[-TAIL:])
            if matches:
                found = _line_answer(matches[-1], full_stop)
                break
    if not found:
        return None
    return found[:MAX_EXTRACTED]


def wrap_gold(gold: str) -> str:
    """Put a bare gold answer in math mode so math-verify parses all of it (see module doc)."""
    gold = str(gold).strip()
    if _MATH_MODE.search(gold) or "\\boxed" in gold:  # an escaped ``\$`` (money) is not math mode
        return gold
    return f"${gold}$"


def grade_math(response: str, gold: str) -> tuple[str | None, bool]:
    """(extracted answer, correct) for one response. Unbounded in time: call it through :class:`MathGrader`."""
    from math_verify import parse, verify

    logging.getLogger("math_verify").setLevel(logging.ERROR)  # it warns on every call that we time it ourselves
    extracted = extract_answer(response)
    if extracted is None:
        return None, False
    note(extracted)  # in a pool worker: a check stopped from here on still shows what it was checking
    gold_parsed = parse(wrap_gold(gold), parsing_timeout=None)
    pred_parsed = parse(f"$\\boxed{{{extracted}}}$", parsing_timeout=None)
    if not gold_parsed or not pred_parsed:
        return extracted, False
    return extracted, bool(verify(gold_parsed, pred_parsed, timeout_seconds=None))


def _to_score(outcome: Outcome) -> Score:
    if outcome.status != "ok":  # a check that timed out or crashed shows the answer it noted (see grade_math)
        return Score(False, outcome.value, outcome.status, outcome.error)
    extracted, correct = outcome.value
    return Score(correct, extracted, "ok" if extracted is not None else "no_answer")


def default_workers() -> int:
    return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)


class MathGrader:
    """Grades batches in parallel worker processes, each check bounded by ``timeout`` seconds.

    Keep one grader alive across batches (RL steps) so that its workers are started once::

        with MathGrader(timeout=5) as grader:
            grades = grader.grade(responses, golds)
    """

    def __init__(self, workers: int | None = None, timeout: float = 5.0, fn: Callable = grade_math):
        self.pool = DeadlinePool(fn, default_workers() if workers is None else workers, timeout,
                                 preload=["t1.tasks.math", "math_verify"])

    def __enter__(self) -> MathGrader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self.pool.close()

    def grade(self, responses: Sequence[str], golds: Sequence[str],
              on_result: OnResult | None = None) -> list[Score]:
        """A :class:`~t1.tasks.base.Score` per response; ``reason`` holds the error of a check that failed."""
        if len(responses) != len(golds):
            raise ValueError(f"{len(responses)} responses but {len(golds)} gold answers")
        callback = None if on_result is None else (lambda i, o: on_result(i, _to_score(o)))
        outcomes = self.pool.map([(r, str(g)) for r, g in zip(responses, golds)], on_result=callback)
        return [_to_score(o) for o in outcomes]


class MathTask(Task):
    """Math with a LaTeX gold answer, graded by math-verify in a :class:`MathGrader` pool of ``workers``
    processes (default: every core), each check bounded by ``timeout`` seconds. The pool starts on the first
    batch and lives until :meth:`close`."""

    name = "math"
    template = "{problem}\nPlease reason step by step, and put your final answer within \\boxed{}."
    answer_cue = "\n\nFinal answer: \\boxed{"

    def __init__(self, timeout: float = 5.0, workers: int | None = None):
        check_limits(workers, timeout)  # now, not at the first batch
        self.timeout, self.workers = timeout, workers
        self._grader: MathGrader | None = None

    def score(self, responses: Sequence[str], items: Sequence[Item],
              on_result: OnResult | None = None) -> list[Score]:
        if len(responses) != len(items):
            raise ValueError(f"{len(responses)} responses but {len(items)} items")
        if self._grader is None:
            self._grader = MathGrader(workers=self.workers, timeout=self.timeout)
        return self._grader.grade(responses, [it.answer or "" for it in items], on_result=on_result)

    def score_one(self, response: str, item: Item) -> Score:
        return self.score([response], [item])[0]

    def close(self) -> None:
        if self._grader is not None:
            self._grader.close()
            self._grader = None
