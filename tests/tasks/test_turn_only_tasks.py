"""Every task grades a response on its own chat turn only (t1.tasks.extract.turn_only)."""

from t1.tasks.base import Item
from t1.tasks.choice import extract_letter
from t1.tasks.countdown import verify

NEXT_TURN = "<|im_end|>\n<|im_start|>user\nAre you sure?<|im_end|>\n<|im_start|>assistant\n"


def test_countdown_ignores_text_after_the_turn_end():
    assert verify("answer \\boxed{ 9 * 7 + 8 }<|im_end|>", (9, 8, 7), 71).correct
    wrong_then_next_turn = f"answer \\boxed{{ 9 + 8 + 7 }}{NEXT_TURN}answer \\boxed{{ 9 * 7 + 8 }}"
    assert not verify(wrong_then_next_turn, (9, 8, 7), 71).correct
    assert not verify("no idea<|eot_id|><answer>9 * 7 + 8</answer>", (9, 8, 7), 71).correct


def test_choice_ignores_text_after_the_turn_end():
    assert extract_letter(f"ANSWER: B{NEXT_TURN}ANSWER: C") == "B"
    assert extract_letter("The answer is (A).<｜end▁of▁sentence｜><｜User｜>ANSWER: D") == "A"
    assert extract_letter("I cannot tell.</s>[INST] pick one [/INST] ANSWER: C") is None


def test_every_task_scores_the_turn_only():
    from t1.tasks import get_task

    with get_task("math", workers=1) as math:
        assert math.score([f"\\boxed{{4}}{NEXT_TURN}\\boxed{{5}}"], [Item(prompt="", answer="4")])[0].correct
    choice = get_task("choice")
    assert not choice.score_one(f"ANSWER: A{NEXT_TURN}ANSWER: B", Item(prompt="", answer="B")).correct
