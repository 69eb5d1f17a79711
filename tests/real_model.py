"""Data for the real-tokenizer tests (Qwen2.5's tokenizer, tiny models): see the fixtures in conftest.py."""

from __future__ import annotations


def arithmetic_rows(n: int, seed: int = 0) -> list[dict]:
    """Math prompts in the math task's template with short well-formed answers: what a chat-template SFT
    model learns to write (and end with <|im_end|>)."""
    import random

    from t1.io import fill
    from t1.tasks.math import MathTask

    rng, rows = random.Random(seed), []
    for _ in range(n):
        a, b = rng.randint(1, 4), rng.randint(1, 4)
        problem = f"What is {a} + {b}?"
        rows.append({"problem": problem, "answer": str(a + b), "prompt": fill(MathTask.template, problem=problem),
                     "response": f"{a} + {b} = {a + b}. The answer is \\boxed{{{a + b}}}."})
    return rows
