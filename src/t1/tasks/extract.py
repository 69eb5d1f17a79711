"""A math response's final answer, found the way math-verify, lighteval and open-r1 find it, and never by
picking "some number in the text" (which an RL policy would learn to game by listing candidates).

The scope: text after the last ``</think>`` (the thinking is scratch work; an unfinished ``<think>`` has no
answer), or the last ``<answer>…</answer>`` (open-r1's format). In it, in order, each rule named in the graded
row (``rule``):

* ``boxed`` — the last ``\\boxed{…}`` together with the boxes right before it that only separators part
  (``\\boxed{2} and \\boxed{5}``, ``\\boxed{a = 7} \\quad \\text{and} \\quad \\boxed{b = 9}``): one
  set/tuple answer. When the gold has several parts (:func:`answer_parts`: ``(3,3), (1,1)``, ``y_1 = e^x,
  y_2 = e^{-x}``), that group holds fewer and is not the gold, the grader also tries the boxes before it,
  taken across words (``\\boxed{(3, 3)} \\text{ for part (a) and } \\boxed{(1, 1)}``) until the parts match —
  never across a retraction ("wait", "actually", "mistake", …; :func:`part_boxes`). A one-part gold is graded
  on the final group alone, so writing more boxes never earns more.
* ``answer_phrase`` — math-verify's anchored extraction on the end of the response: the expression after
  "final answer is", "Final Answer: The smallest $k$ is 12", "The answer is $\\frac{2}{3}$", "Answer: 5", or a
  line "Answer" followed by display math (``Answer \\[ 9 \\]``, ``**Answer**\\n$$9$$``).
  An answer phrase that goes on to list more values (``Answer: 1, 2, …, 10``) gives no answer.
* ``final_expression`` — a response that ends with a math expression: a last line that is only math
  (``$-7$``, ``\\[ \\frac{3}{4} \\]``, ``y = 4``), a last display block (``\\[\\n 9 \\n\\]``), or a last
  sentence that ends in one (``Therefore $a+b+c=12$.``), also when it closes with "is the solution" /
  "are the answers" (``Therefore $x \\geq 5$ is the solution.``).
  Prose after it, or a last line of words around bare numbers ("It could be 3, 4, 5, 6 or 7."), is no answer.

Before any rule the response is cut at its turn's end (:func:`turn_only`). In a boxed answer or a final
expression a percent in words is read as a percent (``28 percent``, ``\\text{28 percent}``, ``28\\,\\%`` →
``28\\%``; :func:`percent_words`); after an answer phrase math-verify reads "28 percent" itself.
:func:`decimal_comma` gives the decimal reading of an answer such as ``3,5`` that the grader tries against a
one-part gold.

``grader="strict"`` keeps only the first rule (boxed answers only). Everything here runs inside a grader
worker (:class:`~t1.tasks.math.MathGrader`), so math-verify's regular expressions are bounded by its time limit;
the text they see is bounded too (:data:`TAIL`).
"""

from __future__ import annotations

import re
from typing import Literal, get_args

from t1.tasks.boxed import count_parts, final_boxes, last_answer_tag

GraderName = Literal["default", "strict"]
GRADERS = get_args(GraderName)


def check_grader(grader: str) -> str:
    if grader not in GRADERS:
        raise ValueError(f"grader must be one of {', '.join(GRADERS)} (got {grader!r})")
    return grader


# where a chat turn ends or the next one starts: ChatML (Qwen), DeepSeek, Llama 3, Gemma, Llama 2 / Mistral
TURN_MARKERS = ("<|im_end|>", "<|im_start|>", "<|endoftext|>", "<｜end▁of▁sentence｜>", "<｜User｜>",
                "<|eot_id|>", "<|eom_id|>", "<|start_header_id|>", "<end_of_turn>", "<start_of_turn>", "</s>")
# the assistant's own turn header, when a response is given with it
_OWN_HEADER = re.compile(r"\s*(?:<\|im_start\|>assistant\n?|<\|start_header_id\|>assistant<\|end_header_id\|>|"
                         r"<start_of_turn>model\n?|<｜Assistant｜>)")


def turn_only(text: str) -> str:
    """``text`` cut at the first turn-end or turn-start marker of the common chat formats
    (:data:`TURN_MARKERS`: ChatML ``<|im_end|>``, ``<|im_start|>``, ``<|endoftext|>``; DeepSeek
    ``<｜end▁of▁sentence｜>``, ``<｜User｜>``; Llama 3 ``<|eot_id|>``, ``<|eom_id|>``, ``<|start_header_id|>``;
    Gemma ``<end_of_turn>``, ``<start_of_turn>``; ``</s>``), after skipping the assistant's own turn header
    when the text opens with it (``<|im_start|>assistant\\n``).

    A response that runs past the end of its turn (a generation whose stop token was kept as text, or that
    went on to write the user's next turn and answer it) is graded on its own turn only: ``… is 2/3.
    <|im_start|>user …`` → ``… is 2/3. ``. Text without ``<`` is returned as it is; otherwise linear in its
    length (one ``str.find`` per marker)."""
    if "<" not in text:
        return text
    own = _OWN_HEADER.match(text)
    start = own.end() if own else 0
    end = len(text)
    for marker in TURN_MARKERS:
        at = text.find(marker, start, end)
        if at >= 0:
            end = at
    return text[start:end]


_PERCENT_TEXT = re.compile(r"\\(?:text|mbox|mathrm)\s*\{\s*(-?\d+(?:\.\d+)?)\s*(?:\\?%|percent|per\s?cent)\s*\}",
                           re.I)
_PERCENT_WORD = re.compile(r"(\d)(?:\s|\\[,;: !]|~)*(?:\\(?:text|mbox|mathrm)\s*\{\s*(?:percent|per\s?cent|\\?%)"
                           r"\s*\}|\bper\s?cent\b|\bpercent\b|\\%)", re.I)


def percent_words(text: str) -> str:
    """A percent in words or spaced out written as ``\\%`` (math-verify reads ``28\\%`` as 0.28 and compares it
    with 28 and 0.28 alike): ``28 percent``, ``28 per cent``, ``28 \\text{ percent}``, ``\\text{28 percent}``,
    ``28\\,\\%`` → ``28\\%``."""
    if "%" not in text and "cent" not in text.lower():
        return text
    return _PERCENT_WORD.sub(r"\1\\%", _PERCENT_TEXT.sub(r"\1\\%", text))


_DECIMAL_COMMA = re.compile(r"(?<![\d.,])(-?\d+)(?:,|\{,\})(\d+)(?![\d.,])")


def decimal_comma(answer: str) -> str | None:
    """The decimal reading of an answer written with a decimal comma, or None when it has none.

    The rule: an answer whose only comma stands between two runs of digits (``3,5``, ``x = 0,25``, ``3{,}5``)
    reads as a decimal (``3.5``) unless exactly three digits follow a whole part that does not start with 0
    (``1,000`` is one thousand, as math-verify already reads it; ``0,125`` is 0.125), or the comma stands in
    brackets (``(3,5)`` is a pair or an interval). The grader tries this
    reading only against a one-part gold (:func:`answer_parts`), where the list reading ``{3, 5}`` could never
    be right; against a gold of several parts ``3,5`` stays the two answers 3 and 5."""
    if answer.count(",") != 1 or any(b in answer.replace("{,}", ",") for b in "([{"):
        return None
    m = _DECIMAL_COMMA.search(answer)
    if m is None or len(m.group(2)) == 3 and not m.group(1).lstrip("-").startswith("0"):
        return None
    return f"{answer[:m.start()]}{m.group(1)}.{m.group(2)}{answer[m.end():]}"


def answer_parts(gold: str) -> int:
    """How many answers a gold answer holds (:func:`t1.tasks.boxed.count_parts` of it, out of ``$…$`` or
    ``\\boxed{…}``). A multi-part gold is written as its parts joined by commas at the top level:
    ``(3, 3), (1, 1)`` for two ordered pairs, ``y_1 = e^x, y_2 = e^{-x}``, ``2, 5`` for two roots; a tuple
    ``(3, 4)`` or an interval ``[5, \\infty)`` is one part."""
    gold = str(gold).strip()
    boxes = final_boxes(gold) if "box" in gold else []
    if boxes:
        return sum(count_parts(box) for box in boxes)
    return count_parts(gold.strip("$").strip())


TAIL = 4000  # characters at the end of the scope searched by the answer-phrase and final-expression rules
_MATH_SEGMENT = re.compile(r"(\$\$.+?\$\$|(?<!\\)\$[^$]+\$|\\\[.+?\\\]|\\\(.+?\\\))\s*[.!]?\s*$", re.S)
_WORD = re.compile(r"(?<![\\A-Za-z])[A-Za-z]{2,}")  # a word (not a LaTeX command such as \frac)
_LATEX_TEXT = re.compile(r"\\(?:text|mathrm|textbf|mbox)\s*\{[^{}]*\}")
MAX_BARE = 300  # characters of a last line read as a bare expression (``y = 4``)
# an answer phrase; or "Answer" opening a line with display math after it (``Answer \\[ 9 \\]``,
# ``**Answer**\\n$$9$$``)
_ANCHOR = re.compile(r"(?i)\bfinal\s+answer\b|\banswer\**\s*(?:is\b|:|=)|"
                     r"(?:^|\n)[#*> \t]*answer[*:\s]*(?=\\\[|\$\$)")
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


# a closing phrase after a sentence's last math: "Therefore $x \\geq 5$ is the solution."
_CLOSING = re.compile(r"(?i)(?<=[$\])])\s*(?:is|are)\s+(?:exactly\s+)?(?:the|our|all\s+the)\s+"
                      r"(?:(?:final|only|required|desired|complete|real)\s+)?(?:answers?|solutions?(?:\s+set)?|"
                      r"set\s+of\s+solutions|results?)(?:\s+(?:to|of|for)\s+the\s+(?:inequality|equation|"
                      r"problem|system|question))?\s*[.!]?\s*$")


def _last_line(text: str) -> str:
    """The last non-blank line of ``text``; when the text ends with a display block over several lines
    (``\\[\\n 9 \\n\\]``, ``$$\\n 9 \\n$$``), that block with the line it opens on, as one line."""
    body = text.rstrip()
    closed = body.rstrip(".!").rstrip()
    for opening, closing in (("\\[", "\\]"), ("$$", "$$")):
        if closed.endswith(closing):
            start = body.rfind(opening, 0, len(closed) - len(closing))
            if start >= 0 and "\n" in body[start:len(closed)]:
                return body[body.rfind("\n", 0, start) + 1:].replace("\n", " ").strip()
    lines = [line for line in body.splitlines() if line.strip()]
    return lines[-1].strip() if lines else ""


def _final_expression(text: str):
    last = percent_words(_CLOSING.sub("", _last_line(text), count=1))
    if not last:
        return None
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
    text = scope(turn_only(response))
    if not text:
        return None, None, ""
    boxes = final_boxes(text)
    if boxes:
        joined = ", ".join(boxes)
        if on_boxed is not None:
            on_boxed(joined)
        parsed = _parse(f"$\\boxed{{{percent_words(joined)}}}$")
        return (parsed or None), joined, "boxed"
    if grader == "strict":
        return None, None, ""
    tail = text[-TAIL:]
    for rule, find in (("answer_phrase", _phrase), ("final_expression", _final_expression)):
        parsed = find(tail)
        if parsed:
            return parsed, str(parsed[-1]), rule
    return None, None, ""


def part_boxes(response: str, parts: int) -> str | None:
    """For a gold of ``parts`` parts (:func:`answer_parts`), the boxes that hold them one per part with words
    between (``\\boxed{(3, 3)} \\text{ for part (a) and } \\boxed{(1, 1)}`` → ``(3, 3), (1, 1)``), joined as
    the ``boxed`` rule joins a group; None when they are no more than the final group :func:`find_answer`
    reads (see :func:`t1.tasks.boxed.final_boxes`)."""
    text = scope(turn_only(response)) if parts > 1 else None
    if not text:
        return None
    group, wider = final_boxes(text), final_boxes(text, parts)
    return ", ".join(wider) if len(wider) > len(group) else None
