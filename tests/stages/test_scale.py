"""`t1 scale` (t1.stages.scale): budgets from one long generation, extension, forced answers, the plot."""


from t1.model.load import build_tokenizer
from t1.rollout.base import Sample
from t1.stages.scale import ScaleSettings, scaling_points
from t1.tasks.base import Item
from t1.tasks.countdown import CountdownTask


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



def test_a_failed_plot_leaves_the_old_result_whole(tiny_model_dir, tmp_path, monkeypatch):
    """scaling.json and scaling.png are one result: a disk that fills while the plot is saved used to leave a
    new scaling.json beside the old plot; now both stay as they were, and no temporary is left behind."""
    import errno
    import os

    import pytest

    import t1.stages.scale as scale

    out = tmp_path / "scale"
    out.mkdir()
    for name in ("scaling.json", "scaling.png"):
        (out / name).write_text("old")

    def full(curves, path, title=""):
        path.write_bytes(b"\x89PNG half")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))

    monkeypatch.setattr(scale, "plot", full)
    with pytest.raises(OSError, match="No space left"):
        scale.run_scale([("tiny", str(tiny_model_dir))], "countdown", out, ScaleSettings(budgets=(2,)), limit=1,
                        progress=False)
    assert sorted(os.listdir(out)) == ["scaling.json", "scaling.png"]
    assert {p.read_bytes() for p in out.iterdir()} == {b"old"}
