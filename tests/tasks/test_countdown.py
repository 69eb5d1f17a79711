import itertools
import random
import time
from fractions import Fraction

import pytest

from t1.config import ConfigError
from t1.tasks.countdown import (
    CountdownConfig,
    Problem,
    generate,
    reachable,
    reward,
    sample_failed,
    solve,
    verify,
    write_trace,
)

CFG = CountdownConfig()


def brute_force_targets(numbers, max_value=100):
    """Every value reachable with all three numbers, by enumerating both tree shapes over all orders and
    operators, keeping only positive integer intermediates ≤ max_value (the generator's rules)."""
    ops = {"+": lambda a, b: a + b, "-": lambda a, b: a - b, "*": lambda a, b: a * b,
           "/": lambda a, b: Fraction(a, b) if b else None}

    def ok(v):
        return v is not None and v > 0 and Fraction(v).denominator == 1 and v <= max_value

    out = set()
    for a, b, c in itertools.permutations(numbers):
        for o1, o2 in itertools.product(ops, repeat=2):
            x = ops[o1](a, b)
            if ok(x):
                y = ops[o2](x, c)
                if ok(y):
                    out.add(int(y))
            x = ops[o1](b, c)
            if ok(x):
                y = ops[o2](a, x)
                if ok(y):
                    out.add(int(y))
    return out


def test_solver_matches_brute_force():
    rng = random.Random(0)
    for _ in range(150):
        nums = tuple(rng.randint(1, 9) for _ in range(3))
        assert set(reachable(nums, CFG)) == brute_force_targets(nums), nums
        for target in (1, 24, 50, 97):
            sol = solve(Problem(nums, target), CFG)
            assert (sol is not None) == (target in brute_force_targets(nums))


def test_generator_is_seeded_and_only_emits_solvable_problems():
    problems = generate(CFG, 300, seed=1)
    assert problems == generate(CFG, 300, seed=1)
    assert problems != generate(CFG, 300, seed=2)
    for p in problems:
        assert len(p.numbers) == 3 and all(1 <= x <= 9 for x in p.numbers)
        assert 1 <= p.target <= 100
        assert p.target in brute_force_targets(p.numbers)


def test_generator_difficulty_knobs():
    cfg = CountdownConfig(num_numbers=4, min_number=2, max_number=12, min_target=20, max_target=60)
    for p in generate(cfg, 50, seed=0):
        assert len(p.numbers) == 4 and all(2 <= x <= 12 for x in p.numbers) and 20 <= p.target <= 60
        assert solve(p, cfg) is not None


@pytest.mark.parametrize("failed", [0, 1, 3])
def test_every_trace_verifies_with_the_requested_failed_attempts(failed):
    rng = random.Random(failed)
    for p in generate(CFG, 200, seed=3):
        trace = write_trace(p, CFG, failed, rng)
        v = verify(trace, p.numbers, p.target)
        assert v.correct, (trace, v)
        assert trace.count(" no , ") == failed
        assert trace.count("try ") == failed + 1
        # every failed attempt is genuinely wrong: its last computed value differs from the target
        for attempt in trace.split("try ")[1:-1]:
            last = attempt.split("?")[0].strip().split("=")[-1].strip()
            assert int(last) != p.target
        assert "check" in trace and trace.rstrip().endswith("yes .")


def test_zero_failed_attempts_is_a_direct_solution():
    p = Problem((3, 5, 7), 22)
    trace = write_trace(p, CFG, 0, random.Random(0))
    assert trace.startswith("try ") and " no " not in trace and "\\boxed{" in trace


def test_failed_attempt_count_is_geometric():
    rng = random.Random(0)
    counts = [sample_failed(CFG, rng) for _ in range(20000)]
    mean = sum(counts) / len(counts)
    # geometric with success 0.3, capped at 6: E ≈ 2.05
    assert 1.9 < mean < 2.2 and max(counts) == CFG.max_failed


@pytest.mark.parametrize("answer, reason", [
    ("\\boxed{3 * 5 + 7}", "ok"),
    ("\\boxed{7 + 3 × 5}", "ok"),
    ("<answer>(3*5)+7</answer>", "ok"),
    ("\\boxed{3 * 5 + 7 = 22}", "ok"),
    ("\\boxed{3 * 5 + 8}", "must use exactly"),            # wrong number
    ("\\boxed{3 * 5 + 7 + 7 - 7}", "must use exactly"),    # reuses a number
    ("\\boxed{3 * 5}", "must use exactly"),                # leaves one out
    ("\\boxed{7 / (5 - 5) + 3}", "division by zero"),
    ("\\boxed{3 * 5 + 7 = 23}", "not the target"),
    ("no box here 22", "no boxed answer"),
    ("\\boxed{3 * 5 + 7", "no boxed answer"),              # truncated
])
def test_verifier_rules(answer, reason):
    v = verify(answer, [3, 5, 7], 22)
    assert (v.reason == "ok") == (reason == "ok")
    assert reason in v.reason


def test_division_rules():
    assert "division by zero" in verify("\\boxed{6 / (3 - 3)}", [6, 3, 3], 2).reason
    assert "not exact" in verify("\\boxed{(7 / 2) * 2}", [7, 2, 2], 7).reason  # exact overall, not per step
    assert verify("\\boxed{(7 / 2) * 2}", [7, 2, 2], 7, CountdownConfig(exact_division=False)).correct
    assert verify("\\boxed{8 / 2 + 1}", [8, 2, 1], 5).correct


@pytest.mark.parametrize("hostile", [
    "\\boxed{__import__('os').system('echo pwned')}",
    "\\boxed{" + "9" * 100000 + "}",
    "\\boxed{" + "(" * 50000 + "1" + ")" * 50000 + "}",
    "\\boxed{" + "(" * 30 + "1" + ")" * 30 + "}",
    "\\boxed{" + "+".join(["9"] * 5000) + "}",
    "\\boxed{99999999 * 99999999 * 99999999 * 99999999}",
    "\\boxed{" * 200000,
    "\\boxed{1e9999}",
    "\\boxed{2 ** 99999}",
    "\\boxed{\x00\xff\ud800}",
    "",
])
def test_hostile_input_returns_zero_fast(hostile):
    # a hang guard, not a speed test (each case takes milliseconds; benchmarks/grade.py measures speed): a
    # verifier that parsed these naively would run for minutes
    start = time.perf_counter()
    assert reward(hostile, [1, 2, 3], 6) == 0.0
    assert time.perf_counter() - start < 20


def test_answer_search_is_linear():
    # a flood of unclosed <answer> tags: the tag regex was quadratic (100 KB: 5 s; 1 MB: over a minute)
    for hostile in ["<answer>" * 125_000, "<answer>" * 125_000 + "</answer>", "<answer>1</answer>" * 60_000,
                    "\\boxed{" + "{}" * 500_000, "<answer>" + "9" * 1_000_000 + "</answer>"]:
        start = time.perf_counter()
        score = verify(hostile, [1, 2, 3], 6)
        assert time.perf_counter() - start < 5 and not score.correct
        assert score.extracted is None or len(score.extracted) <= 1000


def test_non_string_response_is_zero():
    assert reward(None, [1, 2, 3], 6) == 0.0  # type: ignore[arg-type]


def test_training_problems_never_include_the_heldout_set():
    from t1.tasks.countdown import generate, heldout, heldout_keys, key

    held = heldout_keys(CFG, 500)
    assert len(heldout(CFG)) == 500
    train = generate(CFG, 5000, seed=0, exclude=held)
    assert not {key(p) for p in train} & held
    assert {key(p) for p in generate(CFG, 5000, seed=0)} & held  # without exclusion they would overlap


def test_give_up_traces_conclude_with_the_closest_wrong_attempt():
    """countdown.give_up: that share of the SFT traces makes max_failed wrong attempts and answers with the
    closest (finished, graded wrong); at 0 (the default) the traces are the same draw for draw as without the
    field."""
    from t1.data.sft import SFTDataConfig, countdown_pairs
    from t1.tasks.arith import evaluate as value_of

    cfg = CountdownConfig(stop_prob=0.5, give_up=0.25)
    pairs = countdown_pairs(SFTDataConfig(num_examples=400, seed=0, countdown=cfg))
    gave_up = [p for p in pairs if " yes ." not in p.response]
    assert 0.15 < len(gave_up) / len(pairs) < 0.35
    for p in gave_up:
        numbers = [int(x) for x in p.prompt.split()[1:4]]
        target = int(p.prompt.split()[6])
        assert p.response.count("try ") == cfg.max_failed and p.response.endswith(" } .")
        assert "check" not in p.response
        answer = p.response[p.response.rindex("\\boxed{") + 7:-4].strip()
        assert not verify(p.response, numbers, target, cfg).correct and answer
        tried = [int(t.split(" ? ")[0].split(" = ")[-1]) for t in p.response.split("try ")[1:]]
        assert abs(value_of(answer).value - target) == min(abs(v - target) for v in tried)
    plain = countdown_pairs(SFTDataConfig(num_examples=50, seed=0, countdown=CountdownConfig(stop_prob=0.5)))
    same = countdown_pairs(SFTDataConfig(num_examples=50, seed=0, countdown=CountdownConfig(stop_prob=0.5,
                                                                                            give_up=0.0)))
    assert [p.response for p in plain] == [p.response for p in same]
    with pytest.raises(ConfigError, match="give_up"):
        CountdownConfig(give_up=1.0).validate()
