"""A math response's final answer, found the way math-verify, lighteval and open-r1 find it, and never by
picking "some number in the text" (which an RL policy would learn to game by listing candidates).

The scope: text after the last ``</think>`` (the thinking is scratch work; an unfinished ``<think>`` has no
answer), or the last ``<answer>…</answer>`` (open-r1's format). In it, in order, each rule named in the graded
row (``rule``):

* ``boxed`` — the last ``\\boxed{…}`` together with the boxes right before it that only separators part
  (``\\boxed{2} and \\boxed{5}``, ``\\boxed{a = 7} \\quad \\text{and} \\quad \\boxed{b = 9}``): one
  set/tuple answer.
* ``answer_phrase`` — math-verify's anchored extraction on the end of the response: the expression after
  "final answer is", "Final Answer: The smallest $k$ is 12", "The answer is $\\frac{2}{3}$", "Answer: 5".
  An answer phrase that goes on to list more values (``Answer: 1, 2, …, 10``) gives no answer.
* ``final_expression`` — a response that ends with a math expression: a last line that is only math
  (``$-7$``, ``\\[ \\frac{3}{4} \\]``, ``y = 4``) or a last sentence that ends in one (``Therefore $a+b+c=12$.``).
  Prose after it, or a last line of words around bare numbers ("It could be 3, 4, 5, 6 or 7."), is no answer.

``grader="strict"`` keeps only the first rule (boxed answers only). Everything here runs inside a grader
worker (:class:`~t1.tasks.math.MathGrader`), so math-verify's regular expressions are bounded by its time limit;
the text they see is bounded too (:data:`TAIL`).
"""

from __future__ import annotations

import re
from typing import Literal, get_args

from t1.tasks.boxed import final_boxes, last_answer_tag

GraderName = Literal["default", "strict"]
GRADERS = get_args(GraderName)


def check_grader(grader: str) -> str:
    if grader not in GRADERS:
        raise ValueError(f"grader must be one of {', '.join(GRADERS)} (got {grader!r})")
    return grader
TAIL = 4000  # characters at the end of the scope searched by the answer-phrase and final-expression rules
_MATH_SEGMENT = re.compile(r"(\$\$.+?\$\$|(?<!\\)\$[^$]+\$|\\\[.+?\\\]|\\\(.+?\\\))\s*[.!]?\s*$", re.S)
_WORD = re.compile(r"(?<![\\A-Za-z])[A-Za-z]{2,}")  # a word (not a LaTeX command such as \frac)
_LATEX_TEXT = re.compile(r"\\(?:text|mathrm|textbf|mbox)\s*\{[^{}]*\}")
MAX_BARE = 300  # characters of a last line read as a bare expression (``y = 4``)
_ANCHOR = re.compile(r"(?i)\bfinal\s+answer\b|\banswer\**\s*(?:is\b|:|=)")
_CHOICE = re.compile(r"(?i:answer)\s*(?:is|:)\s*\(([A-E])\)[.\s]*$")
_HEDGE = re.compile(r"\b(?:or|maybe|perhaps|either|could|might|possibly)\b", re.I)
_MORE_VALUES = re.compile(r"\d|(?<!\\)\$|\\\(|\\\[")


def scope(response: str) -> str | None:
    """The part of ``response`` that may hold the final answer, or None (unfinished thinking)."""
    if "</think>" in response:
        response = response[response.rfind("</think>") + len("</think>"):]
    elif "<think>" in response:
        return None
    tagged = last_answer_tag(response) if "<answer>" in response else None
    return tagged if tagged else response


def _parse(text: str, anchored: bool = False):
    from math_verify import ExprExtractionConfig, LatexExtractionConfig, parse

    if anchored:
        config = [LatexExtractionConfig(try_extract_without_anchor=False, boxed_match_priority=-1),
                  ExprExtractionConfig(try_extract_without_anchor=False)]
        return parse(text, extraction_config=config, extraction_mode="first_match", parsing_timeout=None)
    return parse(text, parsing_timeout=None)


def _phrase(text: str):
    """math-verify's anchored extraction, refused when the answer phrase lists further values after it."""
    anchors = list(_ANCHOR.finditer(text))
    if not anchors:  # math-verify also reads "answer" within 50 characters of a number ("no answer at all 5")
        return None
    text = text[anchors[-1].start():]
    parsed = _parse(text, anchored=True)
    if not parsed:
        letter = _CHOICE.search(text)  # "the answer is (C)": a choice outside math mode, which math-verify skips
        return _parse(f"$\\boxed{{\\text{{({letter.group(1)})}}}}$") if letter else None
    found = parsed[-1]
    at = text.rfind(found)
    if at >= 0:
        rest = text[at + len(found):].split("\n", 1)[0]
        rest = re.sub(r"(?i)I hope it is correct\.?", "", rest).strip(" .$)}\\]")
        if _MORE_VALUES.search(rest):
            return None
    return parsed


def _final_expression(text: str):
    lines = [line for line in text.rstrip().splitlines() if line.strip()]
    if not lines:
        return None
    last = lines[-1].strip()
    segment = _MATH_SEGMENT.search(last)
    if segment is not None:  # math-verify reads "$3$, $5$ and $7$" as one set: a list is not its last item
        return None if _HEDGE.search(last[: segment.start()]) else _parse(last)
    bare = _LATEX_TEXT.sub("", last)
    if len(last) <= MAX_BARE and "box" not in last and not _WORD.search(bare) and re.search(r"[\d\\]", bare):
        return _parse(f"${last.rstrip('.')}$")
    return None


def find_answer(response: str, grader: str = "default", on_boxed=None):
    """``(parsed, extracted, rule)``: math-verify's parse of the final answer (None when there is none), its
    text, and the rule that found it ("" when none did). ``on_boxed(text)`` hears a boxed answer before it is
    parsed (a grader worker notes it: a check stopped while parsing still shows what it was checking)."""
    text = scope(response)
    if not text:
        return None, None, ""
    boxes = final_boxes(text)
    if boxes:
        joined = ", ".join(boxes)
        if on_boxed is not None:
            on_boxed(joined)
        parsed = _parse(f"$\\boxed{{{joined}}}$")
        return (parsed or None), joined, "boxed"
    if grader == "strict":
        return None, None, ""
    tail = text[-TAIL:]
    for rule, find in (("answer_phrase", _phrase), ("final_expression", _final_expression)):
        parsed = find(tail)
        if parsed:
            return parsed, str(parsed[-1]), rule
    return None, None, ""
