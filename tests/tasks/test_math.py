import threading
import time

import pytest

from t1.data import DATA_DIR
from t1.io import read_jsonl
from t1.tasks.math import MathGrader, MathTask, extract_answer, grade_math, wrap_gold

# (response, gold, expected verdict)
CASES = [
 ("The answer is \\boxed{0.5}", "\\frac{1}{2}", True),
 ("\\boxed{\\frac12}", "0.5", True),
 ("\\boxed{x=3}", "3", True),
 ("\\boxed{3}", "x=3", True),
 ("roots: \\boxed{2, 1}", "1, 2", True),
 ("\\boxed{\\{1,2\\}}", "1,2", True),
 ("\\boxed{(0,1]}", "(0, 1]", True),
 ("\\boxed{(0,1)}", "(0, 1]", False),
 ("\\boxed{[2,5)}", "[2,5)", True),
 ("\\boxed{30^\\circ}", "30", True),
 ("\\boxed{30}", "30^\\circ", True),
 ("\\boxed{\\text{(B)}}", "\\text{(B)}", True),
 ("\\boxed{B}", "\\text{(B)}", True),
 ("\\boxed{C}", "\\text{(B)}", False),
 ("\\boxed{4, 12, 2}", "10, 4, 2", False),
 ("\\boxed{200}", "2", False),
 ("\\boxed{2}", "200", False),
 ("\\boxed{\\sqrt{2}/2}", "\\frac{\\sqrt{2}}{2}", True),
 ("\\boxed{\\dfrac{3}{4}}", "\\frac34", True),
 ("\\boxed{\\$36}", "\\$36", True),
 ("\\boxed{36}", "\\$36", True),
 ("\\boxed{10\\%}", "10", True),
 ("\\boxed{2\\pi}", "2\\pi", True),
 ("\\boxed{6.28}", "2\\pi", False),
 ("\\boxed{x^2+2x+1}", "(x+1)^2", True),
 ("I think 5. The final answer is 7", "7", True),
 ("ANSWER: 12", "12", True),
 ("no answer at all 5", "5", False),
]


@pytest.fixture(scope="module")
def grader():
    with MathGrader(workers=2, timeout=10.0) as g:
        yield g


@pytest.mark.parametrize("response, gold, expected", CASES)
def test_tricky_equivalences(response, gold, expected):
    assert grade_math(response, gold)[1] is expected


def test_extraction():
    assert extract_answer("a \\boxed{1} then \\boxed{\\frac{1}{2}} done") == "\\frac{1}{2}"
    assert extract_answer("\\boxed 5") == "5"
    assert extract_answer("\\fbox{7}") == "7"
    assert extract_answer("cut off \\boxed{\\frac{1}{") is None
    assert extract_answer("just 42") is None  # never "the last number"
    assert extract_answer(None) is None  # type: ignore[arg-type]


def test_wrap_gold():
    assert wrap_gold("10, 4, 2") == "$10, 4, 2$"
    assert wrap_gold("\\$36") == "$\\$36$"  # an escaped dollar is money, not math mode
    assert wrap_gold("$x$") == "$x$"


def test_all_math500_reference_solutions_grade_correct(grader):
    rows = read_jsonl(DATA_DIR / "math500.jsonl")
    assert len(rows) == 500
    grades = grader.grade([r["solution"] for r in rows], [r["answer"] for r in rows])
    wrong = [(r["id"], r["answer"], g) for r, g in zip(rows, grades) if not g.correct]
    assert not wrong, wrong[:5]
    # and each against another problem's answer is (almost always) wrong
    shifted = grader.grade([r["solution"] for r in rows], [rows[i - 1]["answer"] for i in range(len(rows))])
    assert sum(g.correct for g in shifted) < 15


def test_pathological_expression_times_out_without_hanging():
    with MathGrader(workers=2, timeout=1.0) as g:
        start = time.perf_counter()
        out = g.grade(["\\boxed{9^{9^{9^{9}}}}", "\\boxed{3}", "\\boxed{(x+1)^{100000}}", "\\boxed{4}"],
                      ["1", "3", "1", "4"])
        elapsed = time.perf_counter() - start
        assert [o.status for o in out] == ["timeout", "ok", "timeout", "ok"]
        assert [o.correct for o in out] == [False, True, False, True]
        assert out[0].extracted == "9^{9^{9^{9}}}"
        assert elapsed < 60  # each check is cut at 1 s; unbounded, these two would never finish
        assert g.pool.restarts == 2
        assert g.grade(["\\boxed{5}"], ["5"])[0].correct  # the pool still works afterwards


def test_grading_from_threads(grader):
    results = {}

    def work(k):
        results[k] = grader_for_thread.grade([f"\\boxed{{{k}}}"], [str(k)])[0].correct

    with MathGrader(workers=1, timeout=5.0) as grader_for_thread:
        t = threading.Thread(target=work, args=(7,))
        t.start()
        t.join(30)
    assert results == {7: True}


def test_length_mismatch_is_an_error(grader):
    with pytest.raises(ValueError, match="2 responses but 1 gold"):
        grader.grade(["a", "b"], ["1"])


def test_extraction_is_linear_and_a_stopped_check_costs_the_parent_nothing():
    # 10 MB of unclosed boxes: extraction once tried each of the last 16 to the end of the text (11 s), and the
    # parent redid it, unbounded, for every check it had stopped
    floods = ["\\boxed{" * 1_500_000, "\\boxed{" + "{}" * 5_000_000, "\\boxed{{}" * 1_200_000]
    for text in floods:
        start = time.perf_counter()
        assert extract_answer(text) is None
        assert time.perf_counter() - start < 6  # measured: under 1 s each
    limit = 1.0
    with MathGrader(workers=1, timeout=limit) as g:
        start = time.perf_counter()
        out = g.grade(floods + ["\\boxed{9^{9^{9^{9}}}}"], ["1"] * 4)
        assert time.perf_counter() - start < 3 * limit * 4  # each check bounded by the limit, nothing after it
    assert all(o.status in ("no_answer", "timeout") and o.extracted is None for o in out[:3])
    assert out[3].status == "timeout" and out[3].extracted == "9^{9^{9^{9}}}"  # noted by the worker


def test_bad_limits_are_refused_when_made():
    for kwargs in ({"timeout": 0}, {"timeout": -1}, {"timeout": float("nan")}, {"workers": 0}, {"workers": -2}):
        with pytest.raises(ValueError, match="workers must be|timeout must be"):
            MathTask(**kwargs)
    with pytest.raises(ValueError, match="workers must be an integer ≥ 1 \\(got 0\\)"):
        MathGrader(workers=0)  # 0 is not "the default"
