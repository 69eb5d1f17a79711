"""Countdown: combine the given numbers with + − × ÷ to reach a target. The embedded default task.

Rules (the generator, solver, trace writer and verifier share them):

* every given number is used exactly once (``use_all``; with ``use_all: false`` a sub-multiset may be used);
* operations ``+ - * /`` with parentheses; arithmetic is exact;
* division must be exact — every ``/`` step must give an integer (``exact_division``);
* the generator and solver additionally keep every intermediate result a positive integer ≤ ``max_value``,
  so every number in a trace is one token of the tiny tokenizer. The verifier does not demand this of a
  model's answer: any expression that follows the first three rules and equals the target is correct.

A trace (the SFT target) reads, for numbers 3 5 7 and target 22, with one failed attempt::

    try 3 + 5 = 8 , 8 * 7 = 56 ? 22 no , too big . try 3 * 5 = 15 , 15 + 7 = 22 ? 22 yes .
    answer \\boxed{ 3 * 5 + 7 } . check 3 * 5 = 15 , 15 + 7 = 22 ? 22 yes .

Every attempt carries out its arithmetic and then restates the target before its verdict ("? 22 no"),
which a feasibility probe found decisive (61 % vs 14 % held-out accuracy with the verdict first). A wrong
attempt is followed by a reflection on why it fails (too big / too small), then a new attempt; the answer is
boxed, then verified by recomputing it. Tokens are separated by single spaces, so the tiny word-level
tokenizer (built from :data:`VOCABULARY` and the numbers) round-trips every trace exactly.

:class:`CountdownTask` is the task behind the :class:`~t1.tasks.base.Task` interface; its
:meth:`~CountdownTask.item_from_problem` is the one conversion of a problem into a prompt.
"""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass, replace
from functools import lru_cache

from t1.config import ConfigError, option, require
from t1.io import DataError
from t1.tasks.arith import MAX_DIGITS, ArithError, evaluate
from t1.tasks.base import Item, Score, Task, shown
from t1.tasks.boxed import last_answer_tag, last_boxed
from t1.tasks.extract import turn_only

# ------------------------------------------------------------------------------------------------- config


@dataclass(frozen=True)
class CountdownConfig:
    num_numbers: int = option(3, "how many numbers each problem gives (2..6)")
    min_number: int = option(1, "smallest given number")
    max_number: int = option(9, "largest given number")
    min_target: int = option(1, "smallest target")
    max_target: int = option(100, "largest target")
    max_value: int = option(100, "largest intermediate result the generator and solver allow")
    use_all: bool = option(True, "every given number must be used exactly once (else: at most once)")
    exact_division: bool = option(True, "every division step must give an integer")
    stop_prob: float = option(
        0.3, "trace writer: chance that each attempt succeeds, giving a geometric number of failed attempts"
    )
    max_failed: int = option(6, "trace writer: cap on the number of failed attempts")
    give_up: float = option(0.0, "trace writer: share of traces that make max_failed wrong attempts, find none "
                                 "right and conclude with the closest one as the answer (finished and wrong), "
                                 "so that a model learns to conclude instead of trying until its budget ends")

    def validate(self) -> None:
        require(2 <= self.num_numbers <= 6, "num_numbers", "must be between 2 and 6", self.num_numbers)
        require(1 <= self.min_number <= self.max_number, "min_number", "must be ≥ 1 and ≤ max_number",
                self.min_number)
        require(self.max_number <= self.max_value, "max_number", "must be ≤ max_value", self.max_number)
        require(1 <= self.min_target <= self.max_target, "min_target", "must be ≥ 1 and ≤ max_target",
                self.min_target)
        require(self.max_target <= self.max_value, "max_target", "must be ≤ max_value", self.max_target)
        require(self.max_value <= 10_000, "max_value", "must be ≤ 10000 (each number is one token)",
                self.max_value)
        require(0.0 < self.stop_prob <= 1.0, "stop_prob", "must be in (0, 1]", self.stop_prob)
        require(self.max_failed >= 0, "max_failed", "must be ≥ 0", self.max_failed)
        require(0.0 <= self.give_up < 1.0, "give_up", "must be in [0, 1)", self.give_up)
        require(self.give_up == 0.0 or self.max_failed >= 1, "give_up", "needs max_failed ≥ 1 (an attempt to "
                "answer with)", self.give_up)


# ------------------------------------------------------------------------------------------------ problems


@dataclass(frozen=True)
class Problem:
    numbers: tuple[int, ...]
    target: int

    def prompt(self) -> str:
        return f"use {' '.join(map(str, self.numbers))} to make {self.target} :"

    def to_dict(self) -> dict:
        return {"numbers": list(self.numbers), "target": self.target}


Step = tuple[int, str, int, int]  # (a, op, b, result)


def _combine(a: int, b: int, max_value: int) -> list[tuple[int, str, int, int]]:
    """All rule-abiding steps on the pair {a, b}, larger operand first."""
    hi, lo = max(a, b), min(a, b)
    out = [(hi, "+", lo, hi + lo), (hi, "*", lo, hi * lo)]
    if hi > lo:
        out.append((hi, "-", lo, hi - lo))
    if lo and hi % lo == 0:  # non-integer steps are never generated (``exact_division`` binds the verifier)
        out.append((hi, "/", lo, hi // lo))
    return [s for s in out if 0 < s[3] <= max_value]


def _successors(pool: tuple[int, ...], cfg: CountdownConfig):
    """Each (step, next pool) from combining two numbers of ``pool``."""
    seen = set()
    for i in range(len(pool)):
        for j in range(i + 1, len(pool)):
            if (pool[i], pool[j]) in seen:
                continue
            seen.add((pool[i], pool[j]))
            rest = pool[:i] + pool[i + 1 : j] + pool[j + 1 :]
            for step in _combine(pool[i], pool[j], cfg.max_value):
                yield step, tuple(sorted(rest + (step[3],)))


def reachable(numbers: tuple[int, ...], cfg: CountdownConfig) -> frozenset[int]:
    """Every target that ``numbers`` can make under the rules."""
    return _reachable(tuple(sorted(numbers)), cfg)


@lru_cache(maxsize=65536)
def _reachable(pool: tuple[int, ...], cfg: CountdownConfig) -> frozenset[int]:
    found = set(pool) if (not cfg.use_all or len(pool) == 1) else set()
    for _, nxt in _successors(pool, cfg):
        found |= _reachable(nxt, cfg)
    return frozenset(found)


def solve(problem: Problem, cfg: CountdownConfig, rng: random.Random | None = None) -> list[Step] | None:
    """An exact solver: a list of steps reaching the target, or None if there is none.

    Depth-first over "combine two numbers of the pool"; with ``rng`` the branches are shuffled, so repeated
    calls return different solutions (the trace writer uses this for variety).
    """
    pool = tuple(sorted(problem.numbers))
    if problem.target not in _reachable(pool, cfg):
        return None
    return _search(pool, problem.target, cfg, rng)


def _search(pool, target, cfg, rng) -> list[Step] | None:
    if target in pool and (len(pool) == 1 or not cfg.use_all):
        return []
    options = list(_successors(pool, cfg))
    if rng is not None:
        rng.shuffle(options)
    for step, nxt in options:
        if target in _reachable(nxt, cfg):
            rest = _search(nxt, target, cfg, rng)
            if rest is not None:
                return [step] + rest
    return None


def key(p: Problem) -> tuple:
    """Problems that differ only in the order of their numbers are the same problem."""
    return tuple(sorted(p.numbers)), p.target


EVAL_SEED = 20251  # the held-out evaluation set: generate(cfg, 500, EVAL_SEED)


def generate(cfg: CountdownConfig, n: int, seed: int, exclude: frozenset = frozenset()) -> list[Problem]:
    """``n`` solvable problems, reproducible from ``seed``, none whose :func:`key` is in ``exclude`` (a
    held-out set). Targets are drawn uniformly from the reachable values in [min_target, max_target] (not
    weighted by how many ways reach them)."""
    rng = random.Random(seed)
    problems = []
    tries = 0
    while len(problems) < n:
        tries += 1
        if tries > 1000 * (n + 10):
            raise ConfigError(f"countdown: could not generate {n:,} problems in number range [{cfg.min_number}, "
                              f"{cfg.max_number}] and target range [{cfg.min_target}, {cfg.max_target}] (outside "
                              "the held-out set): widen min_number/max_number or min_target/max_target")
        numbers = tuple(rng.randint(cfg.min_number, cfg.max_number) for _ in range(cfg.num_numbers))
        targets = sorted(t for t in reachable(numbers, cfg) if cfg.min_target <= t <= cfg.max_target)
        if targets:
            p = Problem(numbers, rng.choice(targets))
            if key(p) not in exclude:
                problems.append(p)
    return problems


def heldout(cfg: CountdownConfig, n: int = 500) -> list[Problem]:
    """The standard held-out evaluation problems for these knobs."""
    return generate(cfg, n, EVAL_SEED)


def heldout_keys(cfg: CountdownConfig, n: int = 500) -> frozenset:
    return frozenset(key(p) for p in heldout(cfg, n))


# -------------------------------------------------------------------------------------------------- traces


def _random_attempt(pool: tuple[int, ...], cfg: CountdownConfig, rng: random.Random) -> list[Step] | None:
    """A uniformly random sequence of steps that uses the whole pool (None if it dead-ends)."""
    steps = []
    while len(pool) > 1:
        options = list(_successors(pool, cfg))
        if not options:
            return None
        step, pool = rng.choice(options)
        steps.append(step)
    return steps


def _expression(numbers: tuple[int, ...], steps: list[Step]) -> str:
    """The single expression that the steps compute, with only the parentheses it needs."""
    prec = {"+": 1, "-": 1, "*": 2, "/": 2}
    items = [(str(x), x, 3) for x in numbers]  # (text, value, precedence of the top operator)

    def take(value: int):
        for k, item in enumerate(items):
            if item[1] == value:
                return items.pop(k)
        raise AssertionError("step uses a number that is not in the pool")

    for a, op, b, result in steps:
        (ta, _, pa), (tb, _, pb) = take(a), take(b)
        p = prec[op]
        if pa < p:
            ta = f"( {ta} )"
        if pb < p or (pb == p and op in "-/"):
            tb = f"( {tb} )"
        items.append((f"{ta} {op} {tb}", result, p))
    return items[-1][0]


def _steps_text(steps: list[Step]) -> str:
    return " , ".join(f"{a} {op} {b} = {r}" for a, op, b, r in steps)


def sample_failed(cfg: CountdownConfig, rng: random.Random) -> int:
    """A geometric number of failed attempts: each attempt succeeds with ``stop_prob``; capped."""
    failed = 0
    while failed < cfg.max_failed and rng.random() >= cfg.stop_prob:
        failed += 1
    return failed


def write_trace(problem: Problem, cfg: CountdownConfig, failed: int, rng: random.Random,
                give_up: bool = False) -> str:
    """A T1-style trace with exactly ``failed`` genuinely wrong attempts before the right one; ``give_up``: the
    wrong attempts only, then the closest of them as the answer (a concluded, wrong response).

    Raises ValueError when the problem does not have ``failed`` distinct wrong attempts, or no solution.
    """
    target = problem.target
    pool = tuple(sorted(problem.numbers))
    solution = solve(problem, cfg, rng)
    if solution is None:
        raise ValueError(f"{problem} has no solution")
    wrong: list[list[Step]] = []
    seen = set()
    for _ in range(50 * (failed + 1)):
        if len(wrong) == failed:
            break
        attempt = _random_attempt(pool, cfg, rng)
        if attempt is None or attempt[-1][3] == target or tuple(attempt) in seen:
            continue
        seen.add(tuple(attempt))
        wrong.append(attempt)
    if len(wrong) < failed:
        raise ValueError(f"{problem}: could not find {failed} distinct wrong attempts")
    parts = []
    for attempt in wrong:
        value = attempt[-1][3]
        why = "too big" if value > target else "too small"
        parts.append(f"try {_steps_text(attempt)} ? {target} no , {why} .")
    if give_up and wrong:
        closest = min(wrong, key=lambda a: abs(a[-1][3] - target))
        parts.append(f"answer \\boxed{{ {_expression(problem.numbers, closest)} }} .")
        return " ".join(parts)
    parts.append(f"try {_steps_text(solution)} ? {target} yes .")
    parts.append(f"answer \\boxed{{ {_expression(problem.numbers, solution)} }} .")
    parts.append(f"check {_steps_text(solution)} ? {target} yes .")
    return " ".join(parts)


# ---------------------------------------------------------------------------------------------- verifying

MAX_EXTRACTED = 1000  # characters of an extracted answer a score shows (a valid one has at most arith.MAX_CHARS)


def verify(response: str, numbers, target: int, cfg: CountdownConfig | None = None) -> Score:
    """Grade a response: its last ``\\boxed{}`` (or ``<answer>`` tag) must be an expression that follows the
    rules and equals ``target``. An optional ``= target`` after the expression is allowed. The score's
    ``reason`` is "ok" or the rule the answer breaks; its status is "no_answer" when there is no answer.

    Never raises on the response and never runs it: the answer is found in time linear in the response's
    length (:mod:`t1.tasks.boxed`), and goes through the whitelist parser of :mod:`t1.tasks.arith`, which
    refuses more than :data:`~t1.tasks.arith.MAX_CHARS` characters and bounds digits, nesting and magnitude, so
    any input returns fast. The score shows at most :data:`MAX_EXTRACTED` characters of the answer.
    """
    cfg = cfg or CountdownConfig()
    if not isinstance(response, str):
        return Score(False, None, "no_answer", "response is not text")
    response = turn_only(response)  # a response that runs past its chat turn is graded on its turn only
    extracted = last_boxed(response)
    if extracted is None:
        extracted = last_answer_tag(response)
    if extracted is None:
        return Score(False, None, "no_answer", "no boxed answer")
    broken = _broken_rule(extracted, numbers, target, cfg)
    return Score(broken is None, extracted[:MAX_EXTRACTED], "ok", broken or "ok")


def _broken_rule(extracted: str, numbers, target: int, cfg: CountdownConfig) -> str | None:
    """The first rule that the extracted answer breaks, or None when it is right."""
    expr = extracted
    if "=" in expr:
        expr, _, rhs = expr.partition("=")
        if rhs.strip() != str(target):
            return f"right-hand side {rhs.strip()[:20]!r} is not the target"
    try:
        result = evaluate(expr)
    except ArithError as e:
        return f"not a valid expression: {e}"
    used, given = Counter(result.numbers), Counter(int(x) for x in numbers)
    if cfg.use_all and used != given:
        return f"uses {sorted(result.numbers)}, must use exactly {sorted(given.elements())}"
    if not cfg.use_all and used - given:
        return f"uses {sorted((used - given).elements())} beyond the given numbers"
    if cfg.exact_division and result.inexact_division:
        return "a division is not exact"
    if result.value != target:
        return f"value {result.value} is not {target}"
    return None


def reward(response: str, numbers, target: int, cfg: CountdownConfig | None = None) -> float:
    """1.0 for a correct answer, else 0.0."""
    return 1.0 if verify(response, numbers, target, cfg).correct else 0.0


# ------------------------------------------------------------------------------------------------- the task

# Every word and symbol a Countdown prompt or trace uses, in the tiny tokenizer's order (its ids depend on it);
# the numbers 0..max_value are added after them.
VOCABULARY = ("use", "to", "make", ":", "try", "?", "no", "yes", ",", ".", "too", "big", "small", "answer",
              "check", "\\boxed{", "}", "(", ")", "+", "-", "*", "/", "=")


def _integer(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def problem_fields(row: dict, where: str) -> Problem:
    """A row's ``numbers`` and ``target`` as a :class:`Problem`; a missing or ill-typed one raises
    :class:`DataError` naming ``where`` and the field. Numbers are integers an answer can write (no sign, at
    most :data:`~t1.tasks.arith.MAX_DIGITS` digits); the target is an integer."""
    for name in ("numbers", "target"):
        if name not in row:
            raise DataError(f"{where}: missing field '{name}'")
    numbers, target = row["numbers"], row["target"]
    if not isinstance(numbers, list) or not numbers or \
            not all(_integer(x) and 0 <= x < 10**MAX_DIGITS for x in numbers):
        raise DataError(f"{where}: field 'numbers' must be a non-empty list of integers from 0 to "
                        f"{10**MAX_DIGITS - 1} (got {shown(numbers)})")
    if not _integer(target):
        raise DataError(f"{where}: field 'target' must be an integer (got {shown(target)})")
    return Problem(tuple(numbers), target)


class CountdownTask(Task):
    """Countdown behind the :class:`~t1.tasks.base.Task` interface; ``cfg`` holds the rules the verifier
    applies (``use_all``, ``exact_division``)."""

    name = "countdown"
    template = "{problem}"
    answer_cue = "answer \\boxed{"
    gold_fields = ("numbers", "target")

    def __init__(self, cfg: CountdownConfig | None = None):
        self.cfg = cfg or CountdownConfig()

    def item_from_problem(self, problem: Problem, id: str, text: str | None = None) -> Item:
        """The one Countdown problem → :class:`Item` conversion. The prompt is :meth:`Problem.prompt`, or
        ``text`` when the data gives its own problem text."""
        prompt = problem.prompt() if text is None else text
        return Item(prompt=prompt, numbers=tuple(problem.numbers), target=int(problem.target), id=id,
                    problem=prompt)

    def item(self, row: dict, where: str, problem_field: str = "problem", answer_field: str = "answer",
             template: str | None = None) -> Item:
        """A row with ``numbers`` and ``target`` (and optionally the problem text in ``problem_field``, used
        as the prompt as it is: no template applies to Countdown, no answer field is read)."""
        problem = problem_fields(row, where)
        text = row.get(problem_field)
        item = self.item_from_problem(problem, str(row.get("id", where)), text if isinstance(text, str) else None)
        return replace(item, row=row)  # the row as read, for a reward function (t1.rl.rewards)

    def gold(self, row: dict, where: str) -> Item:
        problem = problem_fields(row, where)
        return Item(prompt="", numbers=problem.numbers, target=problem.target)

    def vocabulary(self) -> list[str]:
        return list(VOCABULARY)

    def score_one(self, response: str, item: Item) -> Score:
        return verify(response, item.numbers, item.target, self.cfg)
