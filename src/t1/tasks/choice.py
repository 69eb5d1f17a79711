"""Multiple choice (GPQA-style): the answer is a letter on a final ``ANSWER: X`` line (or in ``\\boxed{X}``)."""

from __future__ import annotations

import re
from typing import Any

from t1.io import DataError
from t1.tasks.base import Item, Score, Task, answer_text, shown
from t1.tasks.boxed import last_boxed
from t1.tasks.extract import turn_only

# no two ``\s*`` side by side (with only optional text between them the engine tries every split of a long run of
# spaces: minutes for 4000 of them)
_LINE = re.compile(r"answer\s*(?:is\s*)?(?:[:：]\s*)?(?:\(\s*)?([A-J])(?![A-Za-z])", re.I)


def extract_letter(response: str, letters: str = "ABCD") -> str | None:
    """The chosen letter: the last ``ANSWER: X`` (also "answer is (X)"), else the last ``\\boxed{X}``, in the
    response's own chat turn (:func:`t1.tasks.extract.turn_only`)."""
    if not isinstance(response, str):
        return None
    response = turn_only(response)  # a response that runs past its chat turn is graded on its turn only
    found = [m.upper() for m in _LINE.findall(response[-4000:])]
    found = [f for f in found if f in letters]
    if found:
        return found[-1]
    boxed = last_boxed(response)
    if boxed:
        m = re.fullmatch(r"\s*(?:\\text\{)?\(?([A-J])\)?\}?\s*", boxed)
        if m and m.group(1).upper() in letters:
            return m.group(1).upper()
    return None


def grade_choice(response: str, gold: str, letters: str = "ABCD") -> Score:
    """Correct when the chosen letter is ``gold``; status "no_answer" when no letter is chosen."""
    letter = extract_letter(response, letters)
    return Score(letter is not None and letter == gold.strip().upper(), letter,
                 "ok" if letter is not None else "no_answer")


class ChoiceTask(Task):
    """Multiple choice: the gold answer is a letter (GPQA; see :func:`t1.eval.benchmarks.load_gpqa`)."""

    name = "choice"
    template = ("{problem}\nThink step by step, then give your final answer on its own line as "
                "'ANSWER: X' where X is one of the letters.")
    answer_cue = "\n\nANSWER: "

    def __init__(self, letters: str = "ABCD"):
        self.letters = letters

    def answer(self, value: Any, where: str, name: str = "answer") -> str:
        letter = answer_text(value, where, name).strip().upper()
        if len(letter) != 1 or letter not in self.letters:
            raise DataError(f"{where}: field '{name}' must be one of the letters {', '.join(self.letters)} "
                            f"(got {shown(value)})")
        return letter

    def score_one(self, response: str, item: Item) -> Score:
        return grade_choice(response, item.answer or "", self.letters)
