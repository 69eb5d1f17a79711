"""Math answers: extract the final answer from a response and grade it against a gold answer with math-verify.

* Extraction (:mod:`t1.tasks.extract`): the response's own chat turn (:func:`~t1.tasks.extract.turn_only`),
  then in it the final group of boxes (with a gold of several parts, one box per part, words between), else
  the expression after an answer phrase, else a final expression, each found with math-verify's own parsing —
  what math-verify, lighteval and open-r1 read (``tests/tasks/data/grading_agreement.jsonl``: 294 responses in
  the styles models write); never "some number in the text", which grades guesses. ``grader="strict"``: boxed
  answers only.
* Gold answers from the data files are bare LaTeX (``\\frac{1}{2}``, ``10, 4, 2``). math-verify reads a bare
  string by falling back to its last number, so ``10, 4, 2`` would match ``4, 12, 2``; :func:`wrap_gold`
  puts it in ``$...$`` first.
* Time: math-verify bounds its own work with ``signal.alarm``, which fails outside a main thread. Grading
  here always runs in worker processes of a :class:`~t1.pool.DeadlinePool`, which kills a check that runs
  past ``timeout`` seconds and reports it as timed out — from any calling thread — and uses every core
  (its share of them under a multi-process launch). Extraction is linear in the response's length and runs
  in the worker too, which notes the answer it found to the parent (:func:`t1.pool.note`): a check stopped
  later still shows it, and the parent never redoes any of the work (a timed-out check whose extraction
  itself overran — a response of many megabytes of braces — shows none).

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
from t1.tasks.extract import answer_parts, check_grader, decimal_comma, find_answer, part_boxes, percent_words

MAX_EXTRACTED = 1000  # characters of an extracted answer kept; longer is garbage, not an answer

def extract_answer(response: str, grader: str = "default") -> str | None:
    """The final answer in a response as text, or None if it gives none (:func:`t1.tasks.extract.find_answer`)."""
    if not isinstance(response, str):
        return None
    found = find_answer(response, grader)[1]
    return None if found is None else found[:MAX_EXTRACTED]


_MATH_MODE = re.compile(r"(?<!\\)\$|\\\(|\\\[")


def wrap_gold(gold: str) -> str:
    """Put a bare gold answer in math mode so math-verify parses all of it (see module doc)."""
    gold = str(gold).strip()
    if _MATH_MODE.search(gold) or "\\boxed" in gold:  # an escaped ``\$`` (money) is not math mode
        return gold
    return f"${gold}$"


def grade_math(response: str, gold: str, grader: str = "default") -> tuple[str | None, bool, str]:
    """(extracted answer, correct, rule) for one response (:mod:`t1.tasks.extract` finds the answer; ``grader``
    "strict" reads boxes only). Unbounded in time: call it through :class:`MathGrader`.

    Beyond math-verify's own equivalence: an inequality in one variable equals the interval it describes
    (``x \\geq 5`` and ``[5, \\infty)``, either way round: math-verify's ``allow_set_relation_comp``), and an
    answer math-verify finds wrong is read again in the ways :func:`_read_otherwise` lists."""
    from math_verify import parse

    logging.getLogger("math_verify").setLevel(logging.ERROR)  # it warns on every call that we time it ourselves
    if not isinstance(response, str):
        return None, False, ""
    # in a pool worker: a check stopped from here on still shows what it was checking
    pred_parsed, extracted, rule = find_answer(response, grader, on_boxed=lambda a: note(a[:MAX_EXTRACTED]))
    if extracted is None:
        return None, False, ""
    extracted = extracted[:MAX_EXTRACTED]
    note(extracted)
    gold_parsed = parse(wrap_gold(gold), parsing_timeout=None)
    if not gold_parsed:
        return extracted, False, rule
    if pred_parsed and _equal(gold_parsed, pred_parsed):
        return extracted, True, rule
    other = _read_otherwise(response, gold, gold_parsed, extracted, rule)
    return (extracted, False, rule) if other is None else (other[:MAX_EXTRACTED], True, rule)


_PERCENT = re.compile(r"\\?%")


def _read_otherwise(response: str, gold: str, gold_parsed, extracted: str, rule: str) -> str | None:
    """The answer, read in a way math-verify does not, that equals the gold; None if no reading does. Tried
    only after math-verify said no, so each reading only adds credit:

    * against a gold of several parts (:func:`~t1.tasks.extract.answer_parts`), one box per part with words
      between (:func:`~t1.tasks.extract.part_boxes`);
    * against a one-part gold, a decimal comma (:func:`~t1.tasks.extract.decimal_comma`: ``3,5`` is 3.5,
      ``1,000`` stays one thousand);
    * a percent on either side compared as its number (math-verify does this for whole numbers only: ``28``
      equals ``28\\%``, but ``12.5`` did not equal ``12.5\\%``)."""
    from math_verify import parse

    def boxed(text: str):
        return parse(f"$\\boxed{{{text}}}$", parsing_timeout=None)

    parts = answer_parts(gold)
    wider = part_boxes(response, parts) if rule == "boxed" else None
    if wider is not None and _equal(gold_parsed, boxed(percent_words(wider))):
        return wider
    decimal = decimal_comma(extracted) if parts == 1 else None
    if decimal is not None and _equal(gold_parsed, boxed(decimal)):
        return extracted
    answer = percent_words(extracted)  # "12.5 \\text{ percent}" → "12.5\\%"
    if "%" in gold or "%" in answer:
        plain_gold = parse(wrap_gold(_PERCENT.sub("", gold)), parsing_timeout=None)
        if plain_gold and _equal(plain_gold, boxed(_PERCENT.sub("", answer))):
            return extracted
    return None


def _equal(gold_parsed, pred_parsed) -> bool:
    from math_verify import verify

    return bool(pred_parsed) and bool(verify(gold_parsed, pred_parsed, allow_set_relation_comp=True,
                                             timeout_seconds=None))


def _to_score(outcome: Outcome) -> Score:
    if outcome.status != "ok":  # a check that timed out or crashed shows the answer it noted (see grade_math)
        return Score(False, outcome.value, outcome.status, outcome.error)
    extracted, correct, rule = outcome.value
    return Score(correct, extracted, "ok" if extracted is not None else "no_answer", rule=rule)


def default_workers() -> int:
    """This process's share of the cores it may run on: all of them, divided among the processes a launcher
    started on this node (torchrun and accelerate set ``LOCAL_WORLD_SIZE``), so that 8 training ranks on a
    192-core node fork 24 graders each, not 192."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    try:
        local = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    except ValueError:
        local = 1
    return max(1, cores // max(1, local))


class MathGrader:
    """Grades batches in parallel worker processes, each check bounded by ``timeout`` seconds.

    Keep one grader alive across batches (RL steps) so that its workers are started once::

        with MathGrader(timeout=5) as grader:
            grades = grader.grade(responses, golds)
    """

    def __init__(self, workers: int | None = None, timeout: float = 5.0, fn: Callable = grade_math,
                 grader: str = "default"):
        self.grader = check_grader(grader)
        self.pool = DeadlinePool(fn, default_workers() if workers is None else workers, timeout,
                                 preload=["t1.tasks.math", "math_verify"])

    def __enter__(self) -> MathGrader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def start(self) -> None:
        """Fork the workers now (:meth:`t1.pool.DeadlinePool.start`)."""
        self.pool.start()

    def close(self) -> None:
        self.pool.close()

    def grade(self, responses: Sequence[str], golds: Sequence[str],
              on_result: OnResult | None = None) -> list[Score]:
        """A :class:`~t1.tasks.base.Score` per response; ``reason`` holds the error of a check that failed."""
        if len(responses) != len(golds):
            raise ValueError(f"{len(responses)} responses but {len(golds)} gold answers")
        callback = None if on_result is None else (lambda i, o: on_result(i, _to_score(o)))
        outcomes = self.pool.map([(r, str(g), self.grader) for r, g in zip(responses, golds)], on_result=callback)
        return [_to_score(o) for o in outcomes]


class MathTask(Task):
    """Math with a LaTeX gold answer, graded by math-verify in a :class:`MathGrader` pool of ``workers``
    processes (default: this process's share of the cores, :func:`default_workers`), each check bounded by
    ``timeout`` seconds. The pool starts on the first batch (or at :meth:`start`) and lives until
    :meth:`close`."""

    name = "math"
    template = "{problem}\nPlease reason step by step, and put your final answer within \\boxed{}."
    answer_cue = "\n\nFinal answer: \\boxed{"

    def __init__(self, timeout: float = 5.0, workers: int | None = None, grader: str = "default"):
        check_limits(workers, timeout)  # now, not at the first batch
        self.grader = check_grader(grader)
        self.timeout, self.workers = timeout, workers
        self._grader: MathGrader | None = None

    def start(self) -> MathGrader:
        """Start the grader and fork its workers now (`t1 rl` does, before CUDA and vLLM start); else the
        first batch starts them."""
        if self._grader is None:
            self._grader = MathGrader(workers=self.workers, timeout=self.timeout, grader=self.grader)
            self._grader.start()
        return self._grader

    def score(self, responses: Sequence[str], items: Sequence[Item],
              on_result: OnResult | None = None) -> list[Score]:
        if len(responses) != len(items):
            raise ValueError(f"{len(responses)} responses but {len(items)} items")
        if self._grader is None:
            self._grader = MathGrader(workers=self.workers, timeout=self.timeout, grader=self.grader)
        return self._grader.grade(responses, [it.answer or "" for it in items], on_result=on_result)

    def score_one(self, response: str, item: Item) -> Score:
        return self.score([response], [item])[0]

    def close(self) -> None:
        if self._grader is not None:
            self._grader.close()
            self._grader = None
