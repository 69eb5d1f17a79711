"""A whitelist parser and exact evaluator for integer arithmetic written by a model. Never ``eval``.

Grammar (whitespace ignored)::

    expr   := term (("+" | "-") term)*
    term   := factor (("*" | "/") factor)*
    factor := INTEGER | "(" expr ")"

Accepted symbols: digits, ``+ - * /`` and their Unicode forms ``− × ÷``; nothing else (a letter ``x`` for
times is rejected as ambiguous). No unary minus, no decimals, no exponent. Arithmetic is exact
(``fractions.Fraction``).

Untrusted input is bounded before any work: at most ``MAX_CHARS`` characters, ``MAX_DIGITS`` digits per
number, ``MAX_DEPTH`` nested parentheses, and any intermediate value beyond ``MAX_MAGNITUDE`` is rejected, so
every call is linear in the (capped) input length and returns in microseconds.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from fractions import Fraction

MAX_CHARS = 400
MAX_DIGITS = 9
MAX_DEPTH = 24
MAX_MAGNITUDE = 10**15

_TOKEN = re.compile(r"\s*(?:(\d+)|([-+*/()×÷−]))")
_CANON = {"×": "*", "÷": "/", "−": "-"}


class ArithError(ValueError):
    """The text is not a well-formed, in-bounds arithmetic expression; the message says why."""


@dataclass(frozen=True)
class Evaluated:
    value: Fraction
    numbers: tuple[int, ...]  # the integer literals, in order of appearance
    inexact_division: bool  # some division step had a non-integer result


def tokenize(text: str) -> list[str]:
    if len(text) > MAX_CHARS:
        raise ArithError(f"expression longer than {MAX_CHARS} characters")
    tokens, pos = [], 0
    stripped = text.rstrip()
    while pos < len(stripped):
        m = _TOKEN.match(stripped, pos)
        if m is None:
            bad = stripped[pos:].lstrip()[:1]
            raise ArithError(f"character {bad!r} is not allowed")
        number, op = m.groups()
        if number is not None:
            if len(number) > MAX_DIGITS:
                raise ArithError(f"number with more than {MAX_DIGITS} digits")
            tokens.append(number)
        else:
            tokens.append(_CANON.get(op, op))
        pos = m.end()
    if not tokens:
        raise ArithError("empty expression")
    return tokens


class _Parser:
    def __init__(self, tokens: list[str]):
        self.tokens = tokens
        self.pos = 0
        self.depth = 0
        self.numbers: list[int] = []
        self.inexact = False

    def peek(self) -> str | None:
        return self.tokens[self.pos] if self.pos < len(self.tokens) else None

    def take(self) -> str:
        tok = self.peek()
        if tok is None:
            raise ArithError("expression ends too early")
        self.pos += 1
        return tok

    def expr(self) -> Fraction:
        value = self.term()
        while self.peek() in ("+", "-"):
            op = self.take()
            value = _check(value + self.term() if op == "+" else value - self.term())
        return value

    def term(self) -> Fraction:
        value = self.factor()
        while self.peek() in ("*", "/"):
            op = self.take()
            rhs = self.factor()
            if op == "*":
                value = _check(value * rhs)
            else:
                if rhs == 0:
                    raise ArithError("division by zero")
                value = _check(value / rhs)
                if value.denominator != 1:
                    self.inexact = True
        return value

    def factor(self) -> Fraction:
        tok = self.take()
        if tok == "(":
            self.depth += 1
            if self.depth > MAX_DEPTH:
                raise ArithError(f"more than {MAX_DEPTH} nested parentheses")
            value = self.expr()
            if self.take() != ")":
                raise ArithError("unbalanced parentheses")
            self.depth -= 1
            return value
        if tok.isdigit():
            self.numbers.append(int(tok))
            return Fraction(int(tok))
        raise ArithError(f"unexpected {tok!r}")


def _check(value: Fraction) -> Fraction:
    if abs(value.numerator) > MAX_MAGNITUDE or value.denominator > MAX_MAGNITUDE:
        raise ArithError("intermediate value out of range")
    return value


def evaluate(text: str) -> Evaluated:
    """Parse and evaluate ``text`` exactly; raise :class:`ArithError` on anything outside the grammar."""
    parser = _Parser(tokenize(text))
    value = parser.expr()
    if parser.pos != len(parser.tokens):
        raise ArithError(f"unexpected {parser.tokens[parser.pos]!r} after a complete expression")
    return Evaluated(value, tuple(parser.numbers), parser.inexact)
