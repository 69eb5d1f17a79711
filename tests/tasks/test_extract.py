"""The pieces of math answer extraction added for real outputs (issue 23, part 5): turn ends, parts of a gold
answer, percents in words, decimal commas, boxes across words, display math after "Answer", closing sentences."""

import time

import pytest

from t1.tasks.boxed import count_parts, final_boxes
from t1.tasks.extract import (
    TURN_MARKERS,
    answer_parts,
    decimal_comma,
    find_answer,
    part_boxes,
    percent_words,
    turn_only,
)
from t1.tasks.math import grade_math


@pytest.mark.parametrize("text, kept", [
    ("The answer is 2/3. <|im_start|>user\nmore", "The answer is 2/3. "),
    ("\\boxed{4}<|im_end|>\n<|endoftext|>", "\\boxed{4}"),
    ("\\boxed{4}<｜end▁of▁sentence｜><｜User｜>next", "\\boxed{4}"),
    ("a<｜User｜>b", "a"),
    ("\\boxed{4}<|eot_id|><|start_header_id|>user<|end_header_id|>", "\\boxed{4}"),
    ("x<|start_header_id|>user", "x"),
    ("\\boxed{4}</s>[INST] again [/INST]", "\\boxed{4}"),
    ("\\boxed{4}<end_of_turn>\n<start_of_turn>user", "\\boxed{4}"),
    ("<|im_start|>assistant\nThe sum is 10.<|im_end|>", "The sum is 10."),  # its own header is skipped
    ("<|start_header_id|>assistant<|end_header_id|>\n\nok<|eot_id|>", "\n\nok"),
    ("no markers at all, 1 < 2", "no markers at all, 1 < 2"),
    ("", ""),
])
def test_turn_only_cuts_at_the_first_marker(text, kept):
    assert turn_only(text) == kept


def test_turn_only_is_linear_and_every_marker_cuts():
    for marker in TURN_MARKERS:
        assert turn_only(f"keep{marker}drop{marker}drop") == "keep"
    flood = "<|im_sta" * 1_000_000 + "<|im_end|>tail"
    start = time.perf_counter()
    assert turn_only(flood).endswith("<|im_sta")
    assert time.perf_counter() - start < 2


def test_grading_stops_at_the_turn_end():
    assert grade_math("\\boxed{4}<|im_end|>\n<|im_start|>user\nno, 5<|im_end|>\n<|im_start|>assistant\n\\boxed{5}",
                      "4")[1]
    assert not grade_math("wrong.<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n\\boxed{5}", "5")[1]


@pytest.mark.parametrize("answer, parts", [
    ("(3, 3), (1, 1)", 2), ("y_1 = e^x, y_2 = e^{-x}", 2), ("1, 2, 3", 3), ("(3, 4)", 1), ("[5, \\infty)", 1),
    ("(0, 1]", 1), ("\\frac{1}{2}", 1), ("\\left( 3, \\frac{\\pi}{2} \\right)", 1), ("\\{1, 2\\}", 1),
    ("1,000", 1), ("12,345,678", 1), ("1,000, 2,000", 2), ("3{,}5", 1), ("a\\,b", 1), ("3,5", 2), ("a; b", 2),
])
def test_count_parts(answer, parts):
    assert count_parts(answer) == parts


def test_answer_parts_of_gold_in_math_mode_or_boxed():
    assert answer_parts("$(3,3), (1,1)$") == 2
    assert answer_parts("\\boxed{2, 5}") == 2
    assert answer_parts("  7 ") == 1


def test_boxes_across_words_only_for_a_gold_of_several_parts():
    text = "\\boxed{(3, 3)} \\text{ for part (a) and } \\boxed{(1, 1)}"
    assert final_boxes(text) == ["(1, 1)"]  # a one-part gold: the last box, as before
    assert final_boxes(text, parts=2) == ["(3, 3)", "(1, 1)"]
    assert final_boxes(text, parts=3) == ["(1, 1)"]  # never exactly 3 parts: the group alone
    assert final_boxes("\\boxed{1} wait, no: \\boxed{2}", parts=2) == ["2"]  # not across a retraction
    assert final_boxes("\\boxed{9} then \\boxed{1} for (a), \\boxed{2, 3} for (b)", parts=3) == ["1", "2, 3"]
    assert final_boxes("\\boxed{1}\\boxed{2}\\boxed{3}", parts=2) == ["1", "2", "3"]  # a group is never cut
    assert part_boxes(text, 2) == "(3, 3), (1, 1)"
    assert part_boxes(text, 1) is None and part_boxes("\\boxed{2, 5}", 2) is None  # nothing beyond the group


def test_parts_across_words_only_add_credit():
    text = "\\boxed{(3, 3)} \\text{ for part (a) and } \\boxed{(1, 1)}"
    assert grade_math(text, "(3,3), (1,1)") == ("(3, 3), (1, 1)", True, "boxed")
    assert grade_math(text, "(1,1)") == ("(1, 1)", True, "boxed")
    assert grade_math(text, "(3,3)")[1] is False  # a one-part gold: the last box only
    # one box holding the whole answer is still read on its own, whatever the boxes before it hold
    assert grade_math("First $\\boxed{x^2 - 7x + 10 = 0}$, so $\\boxed{x = 2 \\text{ or } x = 5}$", "2, 5")[1]


@pytest.mark.parametrize("text, read", [
    ("28 percent", "28\\%"), ("28 per cent", "28\\%"), ("28 \\text{ percent}", "28\\%"),
    ("\\text{28 percent}", "28\\%"), ("28\\,\\%", "28\\%"), ("12.5\\text{percent}", "12.5\\%"),
    ("28\\%", "28\\%"), ("percentile 28", "percentile 28"), ("28 percentile", "28 percentile"), ("7", "7"),
])
def test_percent_words(text, read):
    assert percent_words(text) == read


@pytest.mark.parametrize("answer, read", [
    ("3,5", "3.5"), ("-3,5", "-3.5"), ("0,25", "0.25"), ("3{,}5", "3.5"), ("x = 2,75", "x = 2.75"),
    ("12,0000", "12.0000"), ("0,125", "0.125"),
    ("1,000", None), ("12,345", None), ("1,2,3", None), ("3, 5", None), ("(3,5)", None), ("[3,5]", None),
    ("7", None), ("1.5,2", None),
])
def test_decimal_comma(answer, read):
    assert decimal_comma(answer) == read


@pytest.mark.parametrize("response, gold, expected", [
    ("\\boxed{3,5}", "3.5", True), ("\\boxed{3,5}", "3, 5", True), ("\\boxed{3,5}", "3", False),
    ("\\boxed{3,5}", "5", False), ("\\boxed{(3,5)}", "3.5", False), ("\\boxed{1,000}", "1000", True),
    ("\\boxed{1,000}", "1", False),
    ("\\boxed{12.5 \\text{ percent}}", "12.5\\%", True), ("The answer is 12.5 percent.", "12.5\\%", True),
    ("\\boxed{13.5 \\text{ percent}}", "12.5\\%", False), ("\\boxed{12.5 \\text{ percent}}", "12.5", True),
    ("\\boxed{x \\geq 5}", "[5, \\infty)", True),
    ("\\boxed{x > 5}", "[5, \\infty)", False), ("\\boxed{[5, \\infty)}", "x \\ge 5", True),
])
def test_readings_math_verify_misses(response, gold, expected):
    assert grade_math(response, gold)[1] is expected


@pytest.mark.parametrize("response, found, rule", [
    ("We get 9.\n\nAnswer\n\\[\n9\n\\]", "9", "answer_phrase"),
    ("**Answer** \\[ 9 \\] ways in all.", "9", "answer_phrase"),
    ("The angle is\n\\[\n  \\frac{\\pi}{6}\n\\]", "\\frac{\\pi}{6}", "final_expression"),
    ("Therefore $x \\geq 5$ is the solution.", "x \\geq 5", "final_expression"),
    ("So $-2 < x < 3$ is the solution set to the inequality.", "-2 < x < 3", "final_expression"),
])
def test_new_answer_forms(response, found, rule):
    parsed, extracted, how = find_answer(response)
    assert parsed and extracted == found and how == rule


@pytest.mark.parametrize("response", [
    "Therefore $x \\geq 5$ is the solution, unless $a < 0$ holds and then we need more.",
    "$3$ or $5$ is the answer.",
    "To answer this we note\n\\[ 3, 4 \\]\nare both possible, so we continue the search.",
])
def test_no_answer_forms_stay_unanswered(response):
    assert find_answer(response)[0] is None


def test_hostile_endings_stay_fast():
    for text in ["\\]" + " " * 100_000 + "x", "$$" * 50_000, "\\[\n" * 50_000 + "\\]", "$x$" + " is the" * 20_000,
                 "1" + " " * 100_000 + "percent", "<" * 1_000_000]:
        start = time.perf_counter()
        find_answer(text)
        assert time.perf_counter() - start < 3
