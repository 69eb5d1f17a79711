"""Penalties: a response that is truncated, repetitive or garbage gets reward −1 instead of its score.

* **truncated**: no end-of-sequence token within the generation budget.
* **repetitive** (the authors' rule): some substring of ``repetition_span`` characters (80) occurs at least
  ``repetition_times`` times (20). Occurrences may overlap: a loop with a period shorter than 80 characters
  (a 76-character sentence said 25 times) repeats every 80-character window of it once per period, while
  ``str.count``-style counting would see only every other one and miss the loop.
* **garbage** (our rule; any one of):
  - the text holds U+FFFD, the replacement character (undecodable bytes);
  - the text holds control characters other than newline, carriage return and tab;
  - the response contains special tokens other than the final end-of-sequence (pad, unk, bos, …) —
    runs of non-text tokens;
  - more than ``foreign_script_fraction`` of its letters come from scripts the prompt never uses (a
    Latin prompt answered in a mix of CJK and Cyrillic). Greek is exempt: mathematics uses it freely.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass

from t1.config import option, require

_NON_ASCII = re.compile(r"[^\x00-\x7f]")
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


@dataclass(frozen=True)
class PenaltyConfig:
    value: float = option(-1.0, "the reward given to a penalised response")
    truncated: bool = option(True, "penalise responses that hit the length budget without ending")
    repetitive: bool = option(True, "penalise repetitive responses")
    repetition_span: int = option(80, "length in characters of the repeated substring")
    repetition_times: int = option(20, "how many occurrences make a response repetitive")
    garbage: bool = option(True, "penalise garbage (see t1.rl.penalties)")
    foreign_script_fraction: float = option(0.2, "garbage: most letters allowed from scripts absent in the prompt")

    def validate(self) -> None:
        require(self.repetition_span >= 1, "repetition_span", "must be ≥ 1", self.repetition_span)
        require(self.repetition_times >= 2, "repetition_times", "must be ≥ 2", self.repetition_times)
        require(0 < self.foreign_script_fraction <= 1, "foreign_script_fraction", "must be in (0, 1]",
                self.foreign_script_fraction)


def is_repetitive(text: str, span: int = 80, times: int = 20) -> bool:
    """True if some ``span``-character substring starts at ≥ ``times`` positions of ``text``."""
    n = len(text)
    if n < span + times - 1:
        return False
    counts: dict[str, int] = {}
    for i in range(n - span + 1):
        w = text[i: i + span]
        c = counts[w] = counts.get(w, 0) + 1
        if c >= times:
            return True
    return False


def _scripts(chars) -> dict[str, int]:
    out: dict[str, int] = {}
    for c in chars:
        if c.isalpha():
            name = unicodedata.name(c, "UNKNOWN")
            script = name.split(" ")[0]
            out[script] = out.get(script, 0) + 1
    return out


def garbage_reason(text: str, prompt: str, token_ids=(), bad_token_ids=frozenset(),
                   foreign_fraction: float = 0.2) -> str | None:
    """Why ``text`` is garbage, or None."""
    if "\ufffd" in text:
        return "replacement character"
    if _CONTROL.search(text):
        return "control characters"
    if bad_token_ids and any(t in bad_token_ids for t in token_ids):
        return "special tokens inside the response"
    if not text.isascii():
        foreign = _scripts(_NON_ASCII.findall(text))
        allowed = set(_scripts(prompt)) | {"LATIN", "GREEK"}
        odd = sum(n for s, n in foreign.items() if s not in allowed)
        letters = sum(1 for c in text if c.isalpha())
        if letters and odd / letters > foreign_fraction:
            return "script mix"
    return None


@dataclass(frozen=True)
class Flags:
    truncated: bool
    repetitive: bool
    garbage: bool

    @property
    def any(self) -> bool:
        return self.truncated or self.repetitive or self.garbage


def check(text: str, prompt: str, finished: bool, token_ids, bad_token_ids, cfg: PenaltyConfig) -> Flags:
    return Flags(
        truncated=cfg.truncated and not finished,
        repetitive=cfg.repetitive and is_repetitive(text, cfg.repetition_span, cfg.repetition_times),
        garbage=cfg.garbage and garbage_reason(text, prompt, token_ids, bad_token_ids,
                                               cfg.foreign_script_fraction) is not None,
    )
