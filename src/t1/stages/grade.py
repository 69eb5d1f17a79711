"""`t1 grade`: grade a JSON Lines file of responses (math, Countdown or multiple choice) and report the
accuracy. Each row holds a ``response`` and the task's gold fields (:attr:`t1.tasks.base.Task.gold_fields`)."""

from __future__ import annotations

import json
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from t1.config import ConfigError
from t1.io import DataError, atomic_write_text, check_output, clean_text, iter_jsonl
from t1.pool import check_limits
from t1.tasks import check_task_name, get_task
from t1.tasks.base import Item, Task


@dataclass
class GradeSummary:
    rows: int
    correct: int
    no_answer: int
    timeouts: int
    errors: int
    bad_lines: int

    @property
    def accuracy(self) -> float:
        return self.correct / self.rows if self.rows else 0.0

    def text(self) -> str:
        return (f"accuracy {self.accuracy:.4f} ({self.correct}/{self.rows}) | no answer found: {self.no_answer}"
                f" | timed out: {self.timeouts} | grader errors: {self.errors} | bad lines skipped: "
                f"{self.bad_lines}")


def _gold(task: Task, path: Path, number: int, row: dict) -> Item:
    """The row's gold answer; a missing or ill-typed field raises :class:`DataError` naming the line."""
    where = f"{path}:{number}"
    if "response" not in row:
        raise DataError(f"{where}: missing field 'response'")
    task.check_gold_fields(row, where)
    if not isinstance(row["response"], str):
        raise DataError(f"{where}: field 'response' must be a string")
    return task.gold(row, where)


def _check_args(task: str, workers: int | None, timeout: float) -> None:
    """The command line's numbers and names, before any work; a bad one raises :class:`ConfigError` naming its
    flag."""
    check_task_name(task, "--task")
    try:
        check_limits(workers, 1.0)
    except ValueError:
        raise ConfigError(f"--workers must be an integer ≥ 1 (got {workers!r})") from None
    try:
        check_limits(None, timeout)
    except ValueError:
        raise ConfigError(f"--timeout must be a number of seconds > 0 (got {timeout!r})") from None


def grade_file(path: str | Path, out: str | Path | None = None, task: str = "math", skip_bad: bool = False,
               workers: int | None = None, timeout: float = 5.0, progress: bool = True,
               grader: str = "default") -> GradeSummary:
    """Grade every row of ``path``; write rows with ``extracted``, ``correct`` and ``status`` to ``out``
    (or standard output). A bad line raises :class:`DataError` naming it, or is counted with ``skip_bad``.

    Before any work: a bad ``task``, ``workers`` or ``timeout`` raises :class:`ConfigError` naming the flag;
    an ``out`` that is the input or cannot be written raises :class:`DataError`."""
    _check_args(task, workers, timeout)
    path = Path(path)
    if out is not None:
        out = check_output(out, path, what="output")
    bad: list = []
    rows, golds = [], []
    with get_task(task, timeout=timeout, workers=workers, grader=grader) as scorer:
        for line in iter_jsonl(path, skip_bad=skip_bad, bad=bad):
            try:
                golds.append(_gold(scorer, path, line.number, line.data))
            except DataError as e:
                if not skip_bad:
                    raise
                bad.append((line.number, str(e)))
                continue
            rows.append(line.data)

        bar = tqdm(total=len(rows), desc=f"grading ({task})", unit="ans", disable=not progress, file=sys.stderr)
        scores = scorer.score([r["response"] for r in rows], golds, on_result=lambda i, g: bar.update())
        bar.close()
    status = Counter()
    for row, g in zip(rows, scores):
        row.update(extracted=g.extracted, rule=g.rule, correct=g.correct, status=g.status)
        status[g.status] += 1

    text = clean_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    if out is None:
        sys.stdout.write(text)
        sys.stdout.flush()
    else:
        atomic_write_text(out, text)
    return GradeSummary(
        rows=len(rows), correct=sum(bool(r["correct"]) for r in rows), no_answer=status["no_answer"],
        timeouts=status["timeout"], errors=status["error"], bad_lines=len(bad),
    )
