"""`t1 eval` (t1.stages.evaluate): the summary's fields, engine options checked before anything runs."""


import pytest

from t1.stages.evaluate import summarize


def test_summary_fields():
    rows = [{"id": str(i // 4), "correct": (i % 4) < (i // 4), "extracted": str(i % 2), "tokens": 10,
             "finished": True} for i in range(12)]
    s = summarize(rows, 4)
    assert s["problems"] == 3 and s["pass@1"] == pytest.approx((0 + 0.25 + 0.5) / 3)
    assert s["pass@4"] == pytest.approx(2 / 3) and "maj@4" in s and s["truncated_rate"] == 0



def test_eval_engine_options_are_checked_before_anything_runs(capsys):
    from t1.cli import main

    code = main(["eval", "--model", "nowhere", "--bench", "countdown", "--engine", "vllm",
                 "--engine-opt", "vllm.gpu_memory_utilizaton=0.5"])
    err = capsys.readouterr().err
    assert code == 2
    assert "vllm.gpu_memory_utilizaton: unknown field; did you mean 'vllm.gpu_memory_utilization'" in err
    assert main(["eval", "--model", "nowhere", "--bench", "countdown", "--engine-opt", "max_batch=0"]) == 2
    assert "max_batch: must be ≥ 1" in capsys.readouterr().err



@pytest.mark.parametrize("args, message", [
    (["--limit", "-2"], "--limit: must be ≥ 0"), (["--n", "0"], "n: must be ≥ 1"),
    (["--temperature", "-1"], "temperature: must be ≥ 0"), (["--top-p", "1.5"], "top_p: must be in (0, 1]"),
    (["--max-new-tokens", "0"], "max_new_tokens: must be ≥ 1"),
])
def test_eval_numbers_out_of_range_are_refused_before_anything_runs(args, message, capsys):
    from t1.cli import main

    assert main(["eval", "--model", "nowhere", "--bench", "countdown", *args]) == 2
    assert message in capsys.readouterr().err
    if args[0] != "--max-new-tokens":  # t1 scale takes budgets instead
        assert main(["scale", "--model", "nowhere", "--bench", "countdown", *args]) == 2
        assert message in capsys.readouterr().err
