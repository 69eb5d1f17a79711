import csv
import itertools

import pytest

from t1.eval.benchmarks import load_bench, load_gpqa
from t1.eval.metrics import majority_correct, mean_stderr, pass_at_k
from t1.model.load import build_tokenizer
from t1.rollout.base import Sample
from t1.stages.evaluate import summarize
from t1.stages.scale import ScaleSettings, scaling_points
from t1.tasks.base import Item
from t1.tasks.countdown import CountdownTask


@pytest.mark.parametrize("n, c, k", [(5, 0, 1), (5, 2, 1), (5, 2, 2), (6, 3, 3), (8, 1, 4), (7, 6, 5), (4, 4, 2)])
def test_pass_at_k_against_brute_force(n, c, k):
    outcomes = [True] * c + [False] * (n - c)
    subsets = list(itertools.combinations(range(n), k))
    brute = sum(any(outcomes[i] for i in s) for s in subsets) / len(subsets)
    assert pass_at_k(n, c, k) == pytest.approx(brute)


def test_mean_stderr_and_majority():
    m, se = mean_stderr([1.0, 0.0, 1.0, 0.0])
    assert m == 0.5 and se == pytest.approx(0.5 / 2 * (4 / 3) ** 0.5)
    assert majority_correct(["5", "7", "5", None], [True, False, True, False])
    assert not majority_correct(["7", "7", "5"], [False, False, True])
    assert not majority_correct([None, None], [False, False])


def test_summary_fields():
    rows = [{"id": str(i // 4), "correct": (i % 4) < (i // 4), "extracted": str(i % 2), "tokens": 10,
             "finished": True} for i in range(12)]
    s = summarize(rows, 4)
    assert s["problems"] == 3 and s["pass@1"] == pytest.approx((0 + 0.25 + 0.5) / 3)
    assert s["pass@4"] == pytest.approx(2 / 3) and "maj@4" in s and s["truncated_rate"] == 0


def test_gpqa_loader_on_a_made_up_csv(tmp_path):
    path = tmp_path / "gpqa.csv"
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["Question", "Correct Answer", "Incorrect Answer 1", "Incorrect Answer 2",
                                          "Incorrect Answer 3", "Subdomain", "High-level domain", "Explanation"])
        w.writeheader()
        for i in range(20):
            w.writerow({"Question": f"Q{i}?", "Correct Answer": f"right{i}", "Incorrect Answer 1": f"w1-{i}",
                        "Incorrect Answer 2": f"w2-{i}", "Incorrect Answer 3": f"w3-{i}", "Subdomain": "x",
                        "High-level domain": "y", "Explanation": "z"})
    items = load_gpqa(path)
    assert items == load_gpqa(path)  # the shuffle is seeded
    letters = set()
    for i, it in enumerate(items):
        line = next(line for line in it.prompt.splitlines() if line.endswith(f"right{i}"))
        assert line.startswith(f"{it.answer})")  # the recorded letter is where the correct option landed
        letters.add(it.answer)
    assert len(letters) > 1
    task, _ = load_bench("gpqa", gpqa_csv=str(path))
    assert task == "choice"
    bad = tmp_path / "bad.csv"
    bad.write_text("Question,Correct Answer\nq,a\n")
    with pytest.raises(Exception, match="missing column"):
        load_gpqa(bad)


def test_shipped_benchmarks_load():
    sizes = {"math500": 500, "aime24": 30, "aime25": 30, "amc23": 40, "omni500": 500, "countdown": 500}
    for name, n in sizes.items():
        task, items = load_bench(name)
        assert len(items) == n and task in ("math", "countdown")
        assert "\\boxed{}" in items[0].prompt or task == "countdown"


class BudgetEngine:
    """A fake engine: a 'thinking' run of `need` tokens then the answer. Its answer after an answer cue is
    right only if the prefix it was given reached `need` tokens of thinking."""

    def __init__(self, tok, need: int, prompt_len: int):
        self.tok, self.need, self.prompt_len = tok, need, prompt_len
        self.think = tok("try", add_special_tokens=False)["input_ids"][0]
        self.calls = []

    def generate(self, prompts, seeds, params):
        self.calls.append(params.max_new_tokens)
        out = []
        for p in prompts:
            thought = len(p) - self.prompt_len
            if thought > 0:  # a forced answer after a cue: right iff enough thinking happened
                ans = "3 * 5 + 7 }" if thought - 2 >= self.need else "3 + 5 + 7 }"
                ids = self.tok(ans, add_special_tokens=False)["input_ids"]
                out.append(Sample(ids, ans, False))
            else:
                tail = self.tok("answer \\boxed{ 3 * 5 + 7 } .", add_special_tokens=False)["input_ids"]
                ids = [self.think] * self.need + tail
                ids = ids[: params.max_new_tokens]
                finished = len(ids) < params.max_new_tokens
                text = self.tok.decode(ids)
                out.append(Sample(ids + ([self.tok.eos_token_id] if finished else []), text, finished))
        return out


def test_scaling_sweep_with_a_fake_engine():
    tok = build_tokenizer(100)
    item = Item(prompt="use 3 5 7 to make 22 :", numbers=(3, 5, 7), target=22, id="x")
    engine = BudgetEngine(tok, need=40, prompt_len=len(tok(item.prompt)["input_ids"]))
    s = ScaleSettings(budgets=(16, 32, 64, 128), n=2)
    pts = scaling_points(engine, tok, CountdownTask(), [item, item], s, progress=False)
    assert [p["budget"] for p in pts] == [16, 32, 64, 128]
    assert [p["accuracy"] for p in pts] == [0.0, 0.0, 1.0, 1.0]  # answers right once the budget allows
    assert [p["finished_rate"] for p in pts] == [0.0, 0.0, 1.0, 1.0]
    assert engine.calls[0] == 128  # one long generation, reused for every budget
    assert sum(c == 128 for c in engine.calls) == 1


def test_scaling_with_extension_and_plot(tmp_path):
    from t1.stages.scale import plot

    tok = build_tokenizer(100)
    item = Item(prompt="use 3 5 7 to make 22 :", numbers=(3, 5, 7), target=22, id="x")
    engine = BudgetEngine(tok, need=10, prompt_len=len(tok(item.prompt)["input_ids"]))
    s = ScaleSettings(budgets=(32, 64), n=1, extend="try", max_extensions=2)
    pts = scaling_points(engine, tok, CountdownTask(), [item], s, progress=False)
    assert len(pts) == 2 and all(0 <= p["accuracy"] <= 1 for p in pts)
    png = plot({"a": pts, "b": pts}, tmp_path / "s.png")
    assert png.read_bytes()[:4] == b"\x89PNG"


class AnsweredEngine:
    """A fake engine whose long sample states the right answer early, then keeps 'checking' past every
    budget. After the answer cue it answers wrongly; asked to continue a prefix cut inside its own
    ``\\boxed{``, it finishes that answer."""

    def __init__(self, tok, prompt_len: int):
        self.tok, self.prompt_len = tok, prompt_len
        ids = lambda t: tok(t, add_special_tokens=False)["input_ids"]  # noqa: E731
        self.cue = ids("answer \\boxed{")
        self.long = ids("try") * 5 + ids("answer \\boxed{ 3 * 5 + 7 } .") + ids("check") * 200
        self.requests = []

    def generate(self, prompts, seeds, params):
        out = []
        for p in prompts:
            if len(p) == self.prompt_len:
                ids = self.long[: params.max_new_tokens]
                out.append(Sample(ids, self.tok.decode(ids), False))
                continue
            self.requests.append(p[self.prompt_len:])
            text = "3 + 5 + 7 }" if p[-len(self.cue):] == self.cue else "+ 7 } ."
            out.append(Sample(self.tok(text, add_special_tokens=False)["input_ids"], text, False))
        return out


def test_truncated_samples_that_already_answered_are_graded_on_that_answer():
    tok = build_tokenizer(100)
    item = Item(prompt="use 3 5 7 to make 22 :", numbers=(3, 5, 7), target=22, id="x")
    prompt_len = len(tok(item.prompt)["input_ids"])
    engine = AnsweredEngine(tok, prompt_len)
    inside_box = engine.long.index(engine.cue[-1]) + 4  # cut after "\boxed{ 3 * 5"
    answered = engine.long.index(tok("}", add_special_tokens=False)["input_ids"][0]) + 2
    budgets = (4, inside_box, answered, 64)
    pts = scaling_points(engine, tok, CountdownTask(), [item], ScaleSettings(budgets=budgets), progress=False)
    # 4 tokens: no answer yet, the cue is appended and the (wrong) forced answer graded; inside the box: the
    # model finishes its own answer, no cue; once answered: the prefix is graded, nothing is generated
    assert [p["accuracy"] for p in pts] == [0.0, 1.0, 1.0, 1.0]
    assert engine.requests == [engine.long[:4] + engine.cue, engine.long[:inside_box]]
    forced = AnsweredEngine(tok, prompt_len)
    pts = scaling_points(forced, tok, CountdownTask(), [item], ScaleSettings(budgets=budgets, force_answer=True),
                         progress=False)
    assert [p["accuracy"] for p in pts] == [0.0, 0.0, 0.0, 0.0]  # always forcing: the wrong second answer wins
    assert all(r[-len(forced.cue):] == forced.cue for r in forced.requests) and len(forced.requests) == 4


def test_eval_engine_options_are_checked_before_anything_runs(capsys):
    from t1.cli import main

    code = main(["eval", "--model", "nowhere", "--bench", "countdown", "--engine", "vllm",
                 "--engine-opt", "vllm.gpu_memory_utilizaton=0.5"])
    err = capsys.readouterr().err
    assert code == 2
    assert "vllm.gpu_memory_utilizaton: unknown field; did you mean 'vllm.gpu_memory_utilization'" in err
    assert main(["eval", "--model", "nowhere", "--bench", "countdown", "--engine-opt", "max_batch=0"]) == 2
    assert "max_batch: must be ≥ 1" in capsys.readouterr().err
