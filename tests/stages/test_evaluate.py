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

    code = main(["eval", "model=nowhere", "bench=[countdown]", "rollout.engine=vllm",
                 "rollout.vllm.gpu_memory_utilizaton=0.5"])
    err = capsys.readouterr().err
    assert code == 2
    assert ("rollout.vllm.gpu_memory_utilizaton: unknown field; did you mean "
            "'rollout.vllm.gpu_memory_utilization'") in err
    assert main(["eval", "model=nowhere", "bench=[countdown]", "rollout.max_batch=0"]) == 2
    assert "rollout.max_batch: must be ≥ 1" in capsys.readouterr().err


@pytest.mark.parametrize("args, message", [
    (["limit=-2"], "limit: must be ≥ 0"), (["n=-1"], "n: must be ≥ 1, or 0"),
    (["temperature=-1"], "temperature: must be ≥ 0"), (["top_p=1.5"], "top_p: must be in (0, 1]"),
    (["max_new_tokens=0"], "max_new_tokens: must be ≥ 1"),
])
def test_eval_numbers_out_of_range_are_refused_before_anything_runs(args, message, capsys):
    from t1.cli import main

    assert main(["eval", "model=nowhere", "bench=[countdown]", *args]) == 2
    assert message in capsys.readouterr().err
    if not args[0].startswith("max_new_tokens"):  # t1 scale takes budgets instead
        assert main(["scale", "models=[nowhere]", "bench=countdown", *args]) == 2
        assert message in capsys.readouterr().err


def test_presets_resolve_to_the_published_protocols_and_overrides_win(capsys):
    """preset=r1 is DeepSeek-R1's protocol (T 0.6, top-p 0.95, 32,768 tokens, n by benchmark size); greedy is
    lighteval's default; a key=value override or a file value still wins over the preset."""
    from t1 import config as C
    from t1.eval.protocols import samples_for
    from t1.stages.evaluate import EvalConfig
    from t1.stages.scale import ScaleConfig

    r1 = C.load(EvalConfig, None, ["model=m", "preset=r1", "bench=[aime24,math500,gpqa]"])
    assert (r1.temperature, r1.top_p, r1.max_new_tokens, r1.n) == (0.6, 0.95, 32768, 0)
    assert [samples_for(r1.n, b) for b in r1.bench] == [64, 4, 8]
    assert C.load(EvalConfig, None, ["model=m", "preset=r1", "n=16"]).n == 16
    greedy = C.load(EvalConfig, None, ["model=m", "preset=greedy"])
    assert (greedy.temperature, greedy.n, greedy.max_new_tokens) == (0.0, 1, 32768)
    assert C.load(EvalConfig, None, ["model=m"]).temperature == 1.0  # no preset: the class defaults
    sc = C.load(ScaleConfig, None, ["models=[m]", "preset=r1", "bench=aime25"])
    assert sc.settings().n == 64 and sc.settings().temperature == 0.6
    with pytest.raises(C.ConfigError, match="unknown preset 'r2'"):
        C.load(EvalConfig, None, ["model=m", "preset=r2"])


def test_eval_and_scale_from_a_config_save_the_protocol(tiny_model_dir, tmp_path, capsys):
    """The whole command on a tiny model: the preset's values are printed and saved with n per benchmark."""
    import json

    from t1.cli import main

    out = tmp_path / "eval"
    assert main(["eval", f"model={tiny_model_dir}", "bench=[countdown]", "preset=r1", "max_new_tokens=16",
                 "limit=3", f"out={out}", "--quiet"]) == 0
    assert "preset r1: temperature 0.6, top_p 0.95" in capsys.readouterr().err
    saved = json.loads((out / "summary.json").read_text())
    assert saved["settings"]["preset"] == "r1" and saved["settings"]["samples_per_benchmark"] == {"countdown": 4}
    assert saved["settings"]["temperature"] == 0.6 and saved["benchmarks"]["countdown"]["samples_per_problem"] == 4
    assert main(["scale", f"models=[{tiny_model_dir}]", "labels=[tiny]", "bench=countdown", "budgets=[4,8]",
                 "preset=greedy", "limit=2", f"out={tmp_path / 'scale'}", "--quiet"]) == 0
    curves = json.loads((tmp_path / "scale" / "scaling.json").read_text())
    assert curves["settings"]["preset"] == "greedy" and [p["budget"] for p in curves["curves"]["tiny"]] == [4, 8]
