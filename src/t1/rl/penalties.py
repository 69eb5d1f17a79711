"""Penalties: a response that is truncated, repetitive or garbage gets reward −1 instead of its score.

* **truncated**: no stop token (the model's turn end or an eos id) within the generation budget.

Each penalised sample records why (:attr:`Flags.reason`: the rule, the token ids, where), which the completion
tables and ``rollouts.jsonl`` keep.
* **repetitive** (the authors' rule): some substring of ``repetition_span`` characters (80) occurs at least
  ``repetition_times`` times (20). Occurrences may overlap: a loop with a period shorter than 80 characters
  (a 76-character sentence said 25 times) repeats every 80-character window of it once per period, while
  ``str.count``-style counting would see only every other one and miss the loop.
* **garbage** (our rule; any one of):
  - the text holds U+FFFD, the replacement character (undecodable bytes);
  - the text holds control characters other than newline, carriage return and tab;
  - the response contains special tokens other than its final stop token (pad, unk, bos, a new turn's
    ``<|im_start|>``, …): :attr:`t1.chat.ChatFormat.special_ids` — the model's turn end and eos ids are never
    garbage (:mod:`t1.chat`);
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
    overlong_buffer: int = option(0, "DAPO's soft overlong punishment: a response ending within this many tokens "
                                     "of the budget loses up to overlong_factor, linearly (0 = off; DAPO: 4096 "
                                     "of 20,480); the hard penalty for truncation still applies")
    overlong_factor: float = option(1.0, "the soft overlong punishment at the budget itself")

    def validate(self) -> None:
        require(self.overlong_buffer >= 0, "overlong_buffer", "must be ≥ 0 tokens (0 = off)", self.overlong_buffer)
        require(self.overlong_factor >= 0, "overlong_factor", "must be ≥ 0", self.overlong_factor)
        require(self.repetition_span >= 1, "repetition_span", "must be ≥ 1", self.repetition_span)
        require(self.repetition_times >= 2, "repetition_times", "must be ≥ 2", self.repetition_times)
        require(0 < self.foreign_script_fraction <= 1, "foreign_script_fraction", "must be in (0, 1]",
                self.foreign_script_fraction)


def is_repetitive(text: str, span: int = 80, times: int = 20) -> bool:
    """True if some ``span``-character substring starts at ≥ ``times`` positions of ``text``."""
    return repetition_at(text, span, times) is not None


def repetition_at(text: str, span: int = 80, times: int = 20) -> int | None:
    """Where the first ``span``-character substring occurring ``times`` times first starts, or None."""
    n = len(text)
    if n < span + times - 1:
        return None
    counts: dict[str, int] = {}
    for i in range(n - span + 1):
        w = text[i: i + span]
        c = counts[w] = counts.get(w, 0) + 1
        if c >= times:
            return text.find(w)
    return None


def _scripts(chars) -> dict[str, int]:
    out: dict[str, int] = {}
    for c in chars:
        if c.isalpha():
            name = unicodedata.name(c, "UNKNOWN")
            script = name.split(" ")[0]
            out[script] = out.get(script, 0) + 1
    return out


def garbage_reason(text: str, prompt: str, token_ids=(), bad_token_ids=frozenset(),
                   foreign_fraction: float = 0.2, name=str) -> str | None:
    """Why ``text`` is garbage, or None; for special tokens, which ids (``name(id)`` shows each) and where."""
    if "\ufffd" in text:
        return f"replacement character at char {text.index(chr(0xFFFD))}"
    control = _CONTROL.search(text)
    if control:
        return f"control character {ord(control.group()):#04x} at char {control.start()}"
    if bad_token_ids:
        where = [(i, t) for i, t in enumerate(token_ids) if t in bad_token_ids]
        if where:
            shown = ", ".join(f"{t} {name(t)} at token {i}" for i, t in where[:3])
            more = f" (+{len(where) - 3} more)" if len(where) > 3 else ""
            return f"special tokens inside the response: {shown}{more}"
    if not text.isascii():
        foreign = _scripts(_NON_ASCII.findall(text))
        allowed = set(_scripts(prompt)) | {"LATIN", "GREEK"}
        odd = {s: n for s, n in foreign.items() if s not in allowed}
        letters = sum(1 for c in text if c.isalpha())
        if letters and sum(odd.values()) / letters > foreign_fraction:
            return f"script mix: {sum(odd.values())} of {letters} letters from {', '.join(sorted(odd))}"
    return None


@dataclass(frozen=True)
class Flags:
    truncated: bool
    repetitive: bool
    garbage: bool
    reason: str = ""  # why, for each penalty that applies: the rule, the token ids, where ("" for none)

    @property
    def any(self) -> bool:
        return self.truncated or self.repetitive or self.garbage


def check(text: str, prompt: str, finished: bool, token_ids, bad_token_ids, cfg: PenaltyConfig,
          name=str) -> Flags:
    """The penalties ``text`` earns, each with its reason. ``token_ids``: the sample's tokens (a final stop id
    is not in ``bad_token_ids``, so it never counts); ``name(id)`` renders a token id in the reason."""
    reasons = []
    truncated = cfg.truncated and not finished
    if truncated:
        tail = list(token_ids[-4:])
        reasons.append(f"truncated: no stop token in {len(token_ids)} tokens (last ids {tail})")
    at = repetition_at(text, cfg.repetition_span, cfg.repetition_times) if cfg.repetitive else None
    if at is not None:
        reasons.append(f"repetitive: a {cfg.repetition_span}-character span from char {at} occurs "
                       f"≥ {cfg.repetition_times} times")
    why = garbage_reason(text, prompt, token_ids, bad_token_ids, cfg.foreign_script_fraction, name) \
        if cfg.garbage else None
    if why:
        reasons.append(f"garbage: {why}")
    return Flags(truncated, at is not None, why is not None, "; ".join(reasons))
