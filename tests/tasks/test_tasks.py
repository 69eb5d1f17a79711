"""The Task interface: one registry, one result shape, one Countdown problem → Item conversion."""

import json

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
