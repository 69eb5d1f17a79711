"""The standing agreement test: t1's math grader against the verdicts of math-verify, lighteval and open-r1.

``data/grading_agreement.jsonl`` holds (response, gold, expected) rows in the styles real reasoning models write
(one ``\\boxed{}``, several boxes forming one answer, "Final Answer: ..." sentences, "the answer is ...", an
unboxed closing expression, R1 ``<think>`` blocks, equivalent forms; since issue 23 part 5 also one box per part
of a multi-part answer with words between, display math after "Answer", percents in words, an inequality in a
closing sentence, decimal commas, and responses that run past their chat turn's end marker) and rows that must
earn nothing (lists of candidates, no answer, a response cut off before its answer, an answer written after
the turn ended). ``expected`` is what a careful human grader says
— is the response's final answer mathematically equal to the gold? — which is math-verify's intended verdict:
every row's final answer was checked with ``verify(parse("$<gold>$"), parse("$\\boxed{<answer>}$"))``, and rows
where math-verify itself is wrong were left out — except the readings t1 adds on purpose
(t1.tasks.math.grade_math: an inequality against the interval it describes, a decimal comma, a percent in words
or of a non-integer), each such row saying so in its ``note``. Each row cites where its style comes from
(``source``).

``MathTask.score`` must give every row its ``expected`` verdict. All rows are graded in one batch, so the file
runs in seconds on CPU.
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import pytest

from t1.tasks.base import Item
from t1.tasks.math import MathTask

TABLE = Path(__file__).parent / "data" / "grading_agreement.jsonl"
MIN_ROWS = 290
FIELDS = {"id": str, "style": str, "response": str, "gold": str, "expected": bool, "source": str}
# every style is present with both verdicts, except no_answer: a response without an answer is never right
STYLES = ("boxed_single", "boxed_multi", "final_answer_sentence", "answer_is", "unboxed_final_expression",
          "think_tags", "equivalent_forms", "gaming", "truncated", "boxed_parts", "display_after_phrase",
          "percent_words", "closing_relation", "decimal_comma", "chat_tokens")
FALSE_ONLY = ("no_answer",)


def load_rows() -> list[dict]:
    with TABLE.open(encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


ROWS = load_rows()


@pytest.fixture(scope="module")
def graded() -> list[tuple[dict, object]]:
    """Every row with its :class:`~t1.tasks.base.Score`, graded in one batch."""
    task = MathTask(timeout=10)
    try:
        scores = task.score([r["response"] for r in ROWS], [Item(prompt="", answer=r["gold"]) for r in ROWS])
    finally:
        task.close()
    return list(zip(ROWS, scores))


def _shown(text: str | None, n: int = 80) -> str:
    """A string as a mismatch line shows it: in backticks, newlines as \\n, only its end when long."""
    if text is None:
        return "None"
    text = text.replace("\n", "\\n")
    return f"`{text}`" if len(text) <= n else f"`...{text[-(n - 3):]}`"


def _mismatches(graded_rows) -> list[str]:
    return [f"{r['id']} [{r['style']}] expected {r['expected']}, got {s.correct} (status {s.status}, "
            f"extracted {_shown(s.extracted)}, gold {_shown(r['gold'])}; response {_shown(r['response'])})"
            for r, s in graded_rows if s.correct is not r["expected"]]


def _report(bad: list[str], total: int) -> str:
    by_style: dict[str, int] = defaultdict(int)
    for line in bad:
        by_style[line.split("[", 1)[1].split("]", 1)[0]] += 1
    counts = ", ".join(f"{k}: {v}" for k, v in sorted(by_style.items()))
    return f"{len(bad)} of {total} rows disagree ({counts}):\n" + "\n".join(bad)


def test_table_is_sound():
    """The table itself: enough rows, well-formed, unique ids, every style with both verdicts."""
    assert len(ROWS) >= MIN_ROWS, f"{len(ROWS)} rows, want at least {MIN_ROWS}"
    for row in ROWS:
        for name, kind in FIELDS.items():
            assert isinstance(row.get(name), kind), f"{row.get('id')}: field {name!r} must be {kind.__name__}"
        assert row["id"] and row["source"].strip() and row["gold"].strip(), row["id"]
        assert row["style"] in STYLES + FALSE_ONLY, f"{row['id']}: unknown style {row['style']!r}"
    ids = [r["id"] for r in ROWS]
    assert len(ids) == len(set(ids)), f"duplicate ids: {sorted({i for i in ids if ids.count(i) > 1})}"
    verdicts: dict[str, set[bool]] = defaultdict(set)
    for row in ROWS:
        verdicts[row["style"]].add(row["expected"])
    for style in STYLES:
        assert verdicts[style] == {True, False}, f"style {style!r} needs both verdicts, has {verdicts[style]}"
    for style in FALSE_ONLY:
        assert verdicts[style] == {False}, f"style {style!r} must be present, and only with expected false"


def test_verdicts_agree_with_math_verify(graded):
    """t1's verdict equals the intended verdict on every row; the failure lists every row that disagrees."""
    bad = _mismatches(graded)
    if bad:
        pytest.fail(_report(bad, len(graded)), pytrace=False)


def test_listing_candidates_earns_no_reward(graded):
    """The RL reward cannot be gamed by listing candidates.

    A response that lists several candidate values (in prose, on an answer line, each in its own box, or as a
    spray of numbers), hedges between alternatives, or ends in prose after a table of values earns nothing
    even though the gold is among the numbers it wrote — often the last one, which plain math-verify would take.
    A response whose final box is wrong earns nothing even if an earlier box was right; against a gold of several
    parts, a spray of boxes is not those parts and a retracted box is not one of them; an answer written after
    the response's chat turn ended (a made-up next turn) counts for nothing. The same candidates
    followed by one committed answer are still graded on that answer (the ``gaming`` rows with expected true).
    Extraction must find *the* final answer, never any number in the text.
    """
    gaming = [(r, s) for r, s in graded if r["style"] == "gaming"]
    assert sum(not r["expected"] for r, _ in gaming) >= 10
    bad = _mismatches(gaming)
    if bad:
        pytest.fail(_report(bad, len(gaming)), pytrace=False)
