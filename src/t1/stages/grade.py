"""`t1 grade`: grade a JSON Lines file of responses (math or Countdown) and report the accuracy."""

from __future__ import annotations

import json
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from t1.io import DataError, atomic_write_text, iter_jsonl
from t1.tasks import countdown
from t1.tasks.math import MathGrader

FIELDS = {"math": ("response", "answer"), "countdown": ("response", "numbers", "target")}


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


def _check_row(path: Path, number: int, row: dict, task: str) -> None:
    for name in FIELDS[task]:
        if name not in row:
            raise DataError(f"{path}:{number}: missing field '{name}'")
    if not isinstance(row["response"], str):
        raise DataError(f"{path}:{number}: field 'response' must be a string")
    if task == "countdown":
        nums = row["numbers"]
        if not isinstance(nums, list) or not all(isinstance(x, int) and not isinstance(x, bool) for x in nums):
            raise DataError(f"{path}:{number}: field 'numbers' must be a list of integers")
        if not isinstance(row["target"], int) or isinstance(row["target"], bool):
            raise DataError(f"{path}:{number}: field 'target' must be an integer")


def grade_file(path: str | Path, out: str | Path | None = None, task: str = "math", skip_bad: bool = False,
               workers: int | None = None, timeout: float = 5.0, progress: bool = True) -> GradeSummary:
    """Grade every row of ``path``; write rows with ``extracted``, ``correct`` and ``status`` to ``out``
    (or standard output). A bad line raises :class:`DataError` naming it, or is counted with ``skip_bad``."""
    if task not in FIELDS:
        raise ValueError(f"--task must be one of {', '.join(FIELDS)} (got {task!r})")
    path = Path(path)
    bad: list = []
    rows = []
    for line in iter_jsonl(path, skip_bad=skip_bad, bad=bad):
        try:
            _check_row(path, line.number, line.data, task)
        except DataError as e:
            if not skip_bad:
                raise
            bad.append((line.number, str(e)))
            continue
        rows.append(line.data)

    bar = tqdm(total=len(rows), desc=f"grading ({task})", unit="ans", disable=not progress, file=sys.stderr)
    status = Counter()
    if task == "math":
        with MathGrader(workers=workers, timeout=timeout) as grader:
            grades = grader.grade([r["response"] for r in rows], [r["answer"] for r in rows],
                                  on_result=lambda i, g: bar.update())
        for row, g in zip(rows, grades):
            row.update(extracted=g.extracted, correct=g.correct, status=g.status)
            status[g.status] += 1
    else:
        for row in rows:
            v = countdown.verify(row["response"], row["numbers"], row["target"])
            row.update(extracted=v.extracted, correct=v.correct,
                       status="ok" if v.extracted is not None else "no_answer")
            status[row["status"]] += 1
            bar.update()
    bar.close()

    text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
    if out is None:
        sys.stdout.write(text)
        sys.stdout.flush()
    else:
        atomic_write_text(Path(out), text)
    return GradeSummary(
        rows=len(rows), correct=sum(bool(r["correct"]) for r in rows), no_answer=status["no_answer"],
        timeouts=status["timeout"], errors=status["error"], bad_lines=len(bad),
    )
