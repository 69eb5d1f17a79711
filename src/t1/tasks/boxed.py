"""Finding the final answer in a model response: the last ``\\boxed{...}``, with balanced braces, or the last
``<answer>...</answer>``.

Both searches are linear in the length of the text for any input (a response is untrusted: a truncated or
hostile one may hold millions of unclosed ``\\boxed{`` or ``<answer>``), and skip text without braces or tags
at the speed of ``str.count`` / ``str.find``.
"""

from __future__ import annotations

import re

MAX_TRIES = 64  # box openings tried, from the last one back; more only in hostile text
_SPACE = re.compile(r"\s*")
_BARE = re.compile(r"[^\s$]+")  # `\boxed 5`
_CHUNK = 2048


def _openings(text: str, tries: int) -> list[int]:
    """Where the content of the last ``tries`` box openings (``\\boxed``, ``\\fbox``, then any space) starts,
    last first."""
    ends = []
    for key in ("\\boxed", "\\fbox"):
        pos = len(text)
        for _ in range(tries):
            pos = text.rfind(key, 0, pos)
            if pos < 0:
                break
            ends.append(pos + len(key))
    ends.sort(reverse=True)
    return [_SPACE.match(text, end).end() for end in ends[:tries]]


def _closing(text: str, start: int, end: int) -> int | None:
    """The index of the brace that closes the one at ``start``, looked for before ``end``; None if none.

    Linear: a chunk whose closing braces cannot bring the depth to zero is skipped with two ``str.count``;
    only the others are walked character by character.
    """
    depth, lo = 0, start
    while lo < end:
        hi = min(end, lo + _CHUNK)
        closes = text.count("}", lo, hi)
        if closes < depth:
            depth += text.count("{", lo, hi) - closes
            lo = hi
            continue
        i = lo
        for c in text[lo:hi]:
            if c == "{":
                depth += 1
            elif c == "}":
                depth -= 1
                if depth == 0:
                    return i
            i += 1
        lo = hi
    return None


def last_boxed(text: str) -> str | None:
    """Content of the last ``\\boxed{...}`` (or ``\\fbox{...}``, or ``\\boxed 5``) in ``text``, else None.

    Braces are matched by counting, so ``\\boxed{\\frac{1}{2}}`` gives ``\\frac{1}{2}``. An unclosed box (a
    truncated response) is passed over for the one before it; at most :data:`MAX_TRIES` openings are tried.

    Linear in ``len(text)``: once a later box is known to be unclosed, every brace after it stays open for
    an earlier box too, so the earlier box can only close before the later one starts. Each opening is
    therefore searched only up to the next, and the searches together cover the text once.
    """
    if "boxed" not in text and "fbox" not in text:
        return None
    limit = len(text)  # an earlier box can only close before the latest unclosed one
    for start in _openings(text, MAX_TRIES):
        if start >= len(text):
            continue
        if text[start] != "{":
            m = _BARE.match(text, start)
            if m:
                return m.group(0)
            continue
        end = _closing(text, start, limit)
        if end is not None:
            return text[start + 1 : end].strip()
        limit = start
    return None


_KEYS = ("\\boxed", "\\fbox")
MAX_GROUP = 8  # boxes read as one answer
# what may stand between the boxes of one answer: commas, "and" / "or", spacing commands, math-mode dollars
# and the variable each names (``$x = \\boxed{-3}$ and $x = \\boxed{1}$``)
_SEPARATOR = re.compile(r"(?:[\s,;.$&]|\\[,;:! ]|\\q?quad|\\\\|\band\b|\bor\b|\b[A-Za-z](?:_\w)?\s*=|"
                        r"\\text\s*\{\s*(?:and|or|,)?\s*\})*")


def _box_before(text: str, pos: int) -> tuple[int, str] | None:
    """(keyword position, content) of the box whose keyword starts last before ``pos`` if it closes before
    ``pos``; None otherwise."""
    key = max(text.rfind(k, 0, pos) for k in _KEYS)
    if key < 0:
        return None
    start = _SPACE.match(text, key + (6 if text.startswith("\\boxed", key) else 5)).end()
    if start >= pos or text[start] != "{":
        return None
    end = _closing(text, start, pos)
    return None if end is None else (key, text[start + 1: end].strip(), end)


def _last_box(text: str) -> tuple[int, str] | None:
    """(keyword position, content) of the last closed box, the one :func:`last_boxed` reads."""
    if "boxed" not in text and "fbox" not in text:
        return None
    pos = limit = len(text)
    for _ in range(MAX_TRIES):
        key = max(text.rfind(k, 0, pos) for k in _KEYS)
        if key < 0:
            return None
        start = _SPACE.match(text, key + (6 if text.startswith("\\boxed", key) else 5)).end()
        if start < len(text) and text[start] == "{":
            end = _closing(text, start, limit)
            if end is not None:
                return key, text[start + 1: end].strip()
            limit = start
        elif start < len(text) and (m := _BARE.match(text, start)):
            return key, m.group(0)
        pos = key
    return None


def count_parts(answer: str) -> int:
    """How many answers ``answer`` lists: its parts parted by commas or semicolons outside brackets and braces
    (``(3, 3), (1, 1)`` has 2, ``\\frac{1}{2}`` and ``(0, 1]`` 1, ``1, 2, 3`` 3). A thousands separator
    (``1,000``, ``12,345,678``), a ``{,}`` and an escaped ``\\,`` part nothing."""
    inside = {m.start() + i for m in _THOUSANDS.finditer(answer) for i, c in enumerate(m.group()) if c == ","}
    parts, depth, prev = 1, 0, ""
    for i, c in enumerate(answer):
        if c in "([{":
            depth += 1
        elif c in ")]}":
            depth = max(0, depth - 1)
        elif c in ",;" and depth == 0 and prev != "\\" and i not in inside:
            parts += 1
        prev = c
    return parts


_THOUSANDS = re.compile(r"(?<![\d.,])\d{1,3}(?:,\d{3})+(?![\d.]|,\d)")  # ``1,000``, ``12,345,678``
# a word that takes back what came before: boxes across it are not one answer
# (``\\boxed{5} ... wait ... \\boxed{7}``)
_RETRACTION = re.compile(r"(?i)\b(?:wait|hmm+|actually|mistake|wrong|incorrect|error|instead|oops|re-?check|"
                         r"double-?check|however|correction)\b")


def final_boxes(text: str, parts: int = 1) -> list[str]:
    """The contents of the boxes that make the final answer: the last closed box (as :func:`last_boxed` finds
    it) and up to :data:`MAX_GROUP` - 1 boxes right before it with only separators between them (``\\boxed{2}
    and \\boxed{5}``, ``$\\boxed{(3, 4)}, \\boxed{(4, 3)}$``); [] without a box.

    ``parts``: how many parts the gold answer has (:func:`count_parts`). When it is more than the group holds,
    the boxes before the group are added across any words but a retraction (:data:`_RETRACTION`) until they
    hold exactly ``parts`` (``\\boxed{(3, 3)} \\text{ for part (a) and } \\boxed{(1, 1)}``); if they never
    do, the group alone is the answer. With a one-part gold only the group counts, so more boxes earn nothing."""
    last = _last_box(text)
    if last is None:
        return []
    group, at = [last[1]], last[0]
    while at > 0 and len(group) < MAX_GROUP:
        prev = _box_before(text, at)
        if prev is None or not _SEPARATOR.fullmatch(text, prev[2] + 1, at):
            break
        group.insert(0, prev[1])
        at = prev[0]
    if parts <= 1 or parts <= (have := sum(count_parts(box) for box in group)):
        return group
    wider = list(group)
    while have < parts and len(wider) < MAX_GROUP:
        prev = _box_before(text, at)
        if prev is None or _RETRACTION.search(text, prev[2] + 1, at):
            break
        wider.insert(0, prev[1])
        have += count_parts(prev[1])
        at = prev[0]
    return wider if have == parts else group


def last_answer_tag(text: str) -> str | None:
    """Content of the last ``<answer>...</answer>`` (the format of TinyZero-style Countdown prompts): the same
    as the last match of ``<answer>(.*?)</answer>`` (dot matching newlines), found with ``str.find`` in one
    pass (the regular expression is quadratic in a flood of unclosed tags)."""
    found, pos = None, 0
    while True:
        start = text.find("<answer>", pos)
        if start < 0:
            break
        end = text.find("</answer>", start + 8)
        if end < 0:
            break
        found, pos = (start + 8, end), end + 9
    return None if found is None else text[found[0] : found[1]].strip()
