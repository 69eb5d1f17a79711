"""Finding the final answer in a model response: the last ``\\boxed{...}``, with balanced braces."""

from __future__ import annotations

import re

_BOX = re.compile(r"\\(?:boxed|fbox)\s*")


def last_boxed(text: str) -> str | None:
    """Content of the last ``\\boxed{...}`` (or ``\\fbox{...}``, or ``\\boxed 5``) in ``text``, else None.

    Braces are matched by counting, so ``\\boxed{\\frac{1}{2}}`` gives ``\\frac{1}{2}``. An unclosed box at the
    end (a truncated response) counts as no answer. Only the last 16 box openings are tried, so hostile text
    full of unclosed boxes stays linear in its length.
    """
    if "boxed" not in text and "fbox" not in text:
        return None
    starts = [m.end() for m in _BOX.finditer(text)]
    for start in reversed(starts[-16:]):
        if start >= len(text):
            continue
        if text[start] != "{":
            m = re.match(r"[^\s$]+", text[start:])  # `\boxed 5`
            if m:
                return m.group(0)
            continue
        depth = 0
        for i in range(start, len(text)):
            c = text[i]
            if c == "{":
                depth += 1
            elif c == "}":
                depth -= 1
                if depth == 0:
                    return text[start + 1 : i].strip()
    return None


_ANSWER_TAG = re.compile(r"<answer>(.*?)</answer>", re.S)


def last_answer_tag(text: str) -> str | None:
    """Content of the last ``<answer>...</answer>`` (the format of TinyZero-style Countdown prompts)."""
    found = _ANSWER_TAG.findall(text)
    return found[-1].strip() if found else None
