"""The Task interface: one registry, one result shape, one Countdown problem → Item conversion."""

import json
import random
import re
import time

import pytest

from t1.io import DataError
from t1.model.load import build_tokenizer
from t1.tasks import TASKS, get_task
from t1.tasks.base import Item, Score
from t1.tasks.countdown import CountdownConfig, CountdownTask, Problem


def test_registry_names_and_unknown_name():
    assert TASKS == ("countdown", "math", "choice")
    for name in TASKS:
        with get_task(name) as task:
            assert task.name == name and "{problem}" in task.template and task.answer_cue
    with pytest.raises(ValueError, match="unknown task 'maths': use one of countdown, math, choice"):
        get_task("maths")
    cfg = CountdownConfig(use_all=False)
    assert get_task("countdown", countdown=cfg).cfg is cfg


def test_answer_cues():
    assert get_task("countdown").answer_cue == "answer \\boxed{"
    assert get_task("math").answer_cue == "\n\nFinal answer: \\boxed{"
    assert get_task("choice").answer_cue == "\n\nANSWER: "


def test_countdown_items_from_problems_and_rows():
    task = CountdownTask()
    item = task.item_from_problem(Problem((3, 5, 7), 22), "x")
    assert item == Item(prompt="use 3 5 7 to make 22 :", numbers=(3, 5, 7), target=22, id="x",
                        problem="use 3 5 7 to make 22 :")
    assert task.item({"numbers": [3, 5, 7], "target": 22}, "f:1") == Item(
        prompt="use 3 5 7 to make 22 :", numbers=(3, 5, 7), target=22, id="f:1", problem="use 3 5 7 to make 22 :")
    own = task.item({"numbers": [3, 5, 7], "target": 22, "problem": "make 22", "id": 4}, "f:2",
                    template="T {problem}")
    assert own.prompt == own.problem == "make 22" and own.id == "4"  # no template for Countdown
    with pytest.raises(DataError, match="f:3: missing field 'target'"):
        task.item({"numbers": [1]}, "f:3")


def test_templated_items_and_missing_fields():
    math = get_task("math")
    item = math.item({"problem": "1+1?", "answer": 2}, "f:1")
    assert item.prompt == "1+1?\nPlease reason step by step, and put your final answer within \\boxed{}."
    assert item.answer == "2" and item.problem == "1+1?" and item.id == "f:1"
    assert math.item({"q": "x", "a": "y"}, "f:2", "q", "a", "Q: {problem}").prompt == "Q: x"
    with pytest.raises(DataError, match="f:3: missing field 'answer'"):
        math.item({"problem": "x"}, "f:3")
    choice = get_task("choice").item({"problem": "p", "answer": "B"}, "f:4")
    assert choice.prompt.startswith("p\nThink step by step") and choice.answer == "B"


def test_one_result_shape():
    cd = CountdownTask()
    it = Item(prompt="", numbers=(3, 5, 7), target=22)
    assert cd.score(["\\boxed{3 * 5 + 7}", "\\boxed{3 + 5 + 7}", "none"], [it] * 3) == [
        Score(True, "3 * 5 + 7", "ok", "ok"), Score(False, "3 + 5 + 7", "ok", "value 15 is not 22"),
        Score(False, None, "no_answer", "no boxed answer")]
    choice = get_task("choice")
    gold = Item(prompt="", answer="B")
    scores = choice.score(["so ANSWER: B", "ANSWER: A", "no idea"], [gold] * 3)
    assert [s.correct for s in scores] == [True, False, False]  # the letter, not just "some letter", counts
    assert [s.extracted for s in scores] == ["B", "A", None]
    assert [s.status for s in scores] == ["ok", "ok", "no_answer"]
    with pytest.raises(ValueError, match="2 responses but 1 items"):
        cd.score(["a", "b"], [it])


def test_math_task_grades_in_its_pool():
    seen = []
    with get_task("math", workers=1, timeout=10.0) as task:
        scores = task.score(["\\boxed{\\frac12}", "\\boxed{3}", "nothing"], [Item(prompt="", answer="0.5")] * 3,
                            on_result=lambda i, s: seen.append(i))
    assert [(s.correct, s.extracted, s.status) for s in scores] == [
        (True, "\\frac12", "ok"), (False, "3", "ok"), (False, None, "no_answer")]
    assert sorted(seen) == [0, 1, 2]


def test_tiny_tokenizer_vocabulary_order_is_unchanged():
    vocab = build_tokenizer(100).get_vocab()
    words = ["<pad>", "<eos>", "<unk>", "use", "to", "make", ":", "try", "?", "no", "yes", ",", ".", "too", "big",
             "small", "answer", "check", "\\boxed{", "}", "(", ")", "+", "-", "*", "/", "="]
    assert [vocab[w] for w in words] == list(range(len(words)))
    assert vocab["0"] == len(words) and vocab["100"] == len(words) + 100 and len(vocab) == len(words) + 101
    assert build_tokenizer(5, ["a", "b"]).get_vocab()["a"] == 3


def test_grade_cli_choice(tmp_path, capsys):
    from t1.cli import main

    src = tmp_path / "c.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in [{"response": "ANSWER: B", "answer": "B"},
                                                             {"response": "ANSWER: C", "answer": "B"},
                                                             {"response": "hmm", "answer": "B"}]))
    assert main(["grade", str(src), "--task", "choice", "--quiet"]) == 0
    captured = capsys.readouterr()
    rows = [json.loads(line) for line in captured.out.splitlines()]
    assert [r["correct"] for r in rows] == [True, False, False]
    assert "accuracy 0.3333 (1/3)" in captured.err and "no answer found: 1" in captured.err


def test_bad_gold_answers_are_refused_naming_the_line_and_field():
    math, choice, cd = get_task("math"), get_task("choice"), CountdownTask()
    # numbers are answers too: written as JSON writes them
    assert math.item({"problem": "p", "answer": 12}, "f:1").answer == "12"
    assert math.gold({"answer": 0.5}, "f:1").answer == "0.5"
    assert choice.gold({"answer": " b"}, "f:1").answer == "B"
    for bad, shown in [(None, "null"), ([1, 2], "[1, 2]"), ("", '""'), ("  ", '"  "'), (True, "true"),
                       ({"a": 1}, '{"a": 1}'), (float("inf"), "Infinity")]:
        message = f"f:7: field 'answer' must be a non-empty string or a number (got {shown})"
        with pytest.raises(DataError, match=re.escape(message)):
            math.gold({"answer": bad}, "f:7")
        with pytest.raises(DataError, match=re.escape(message.replace("'answer'", "'sol'"))):
            math.item({"problem": "p", "sol": bad}, "f:7", answer_field="sol")
    with pytest.raises(DataError, match="f:2: field 'problem' must be a non-empty string \\(got null\\)"):
        math.item({"problem": None, "answer": "1"}, "f:2")
    letters = "f:3: field 'answer' must be one of the letters A, B, C, D (got \"E\")"
    with pytest.raises(DataError, match=re.escape(letters)):
        choice.item({"problem": "p", "answer": "E"}, "f:3")
    bad_rows = [({"numbers": [3, "5"], "target": 8}, "numbers"), ({"numbers": [], "target": 8}, "numbers"),
                ({"numbers": None, "target": 8}, "numbers"), ({"numbers": [-3, 5], "target": 2}, "numbers"),
                ({"numbers": [True, 5], "target": 6}, "numbers"), ({"numbers": [3, 5], "target": "8"}, "target"),
                ({"numbers": [3, 5], "target": 8.0}, "target")]
    for row, field in bad_rows:
        for read in (cd.gold, cd.item):
            with pytest.raises(DataError, match=f"f:4: field '{field}' must be"):
                read(row, "f:4")


def _hostile(rng: random.Random) -> str:
    """A response built from the pieces that have broken answer extraction or grading before."""
    pieces = ["\\boxed{", "\\boxed ", "\\fbox{", "{", "}", "<answer>", "</answer>", "9" * rng.randint(1, 3000),
              "9^{" * rng.randint(1, 40), "(x+1)^{100000}", " " * rng.randint(1, 5000), "\n" * rng.randint(1, 500),
              "the answer is ", "ANSWER: ", "Final answer: ", ". ", "$", "\\frac{", "=", "3 * 5 + 7", "(", ")",
              "".join(chr(rng.randint(0x80, 0x10FFFF)) for _ in range(rng.randint(1, 50))),
              chr(rng.randint(0xD800, 0xDFFF))]
    parts = []
    for _ in range(rng.randint(1, 40)):
        piece = rng.choice(pieces)
        parts.append(piece * (rng.randint(1, 20_000 // max(1, len(piece))) if rng.random() < 0.2 else 1))
    return "".join(parts)


@pytest.mark.parametrize("n_math", [100, pytest.param(300, marks=pytest.mark.slow)])
def test_every_grader_returns_a_score_fast_for_hostile_responses(n_math):
    # 300 responses for the in-process graders (milliseconds in all); math-verify takes up to its limit on
    # many of them, so the quick run gives it the first 100
    rng = random.Random(20251)
    responses = [_hostile(rng) for _ in range(300)]
    cd_item, math_item = Item(prompt="", numbers=(3, 5, 7), target=22), Item(prompt="", answer="22")
    limit, workers = 0.5, 2  # a short limit: the point is that every check ends, however it ends
    checks = [(get_task("countdown"), cd_item, responses, 10.0),
              (get_task("choice"), Item(prompt="", answer="B"), responses, 10.0),
              (get_task("math", timeout=limit, workers=workers), math_item, responses[:n_math],
               3 * limit * n_math / workers)]  # every check cut at the limit, with room to spare
    for task, item, batch, bound in checks:
        with task:
            start = time.perf_counter()
            scores = task.score(batch, [item] * len(batch))
            elapsed = time.perf_counter() - start
        assert elapsed < bound, (task.name, elapsed)
        assert len(scores) == len(batch)
        for s in scores:
            assert isinstance(s, Score) and s.status in ("ok", "no_answer", "timeout", "error")
            assert s.correct in (True, False) and (s.extracted is None or len(s.extracted) <= 1000)


@pytest.mark.parametrize("response, correct", [
    ("Reasoning...\nANSWER: C", True), ("The answer is (C).", True), ("so the final choice is \\boxed{C}", True),
    ("**Answer: C**", True), ("Answer: (C)", True), ("ANSWER: B", False), ("I think (B) or (C)", False),
])
def test_multiple_choice_answers_in_the_formats_models_use(response, correct):
    """GPQA answers: the requested `ANSWER: X` line and the common variants; a hedge between letters is none."""
    from t1.tasks.base import Item
    from t1.tasks.choice import ChoiceTask

    assert ChoiceTask().score_one(response, Item(prompt="", answer="C")).correct is correct
