"""A smoke run of the whole demo with tiny settings: every stage runs and summary.json has every field; the
checks' numbers on hand-made scaling curves (the free budget, judging on the mean over RL seeds)."""

import json
import statistics
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest

from t1.cli import main
from t1.eval.metrics import finished_length_growth
from t1.io import read_log
from t1.pipelines.demo.checks import CHECKS, free_budget, judge, summarize
from t1.pipelines.demo.run import DemoConfig, _seed_seconds, _sft_config, _Stages, demo_table, parallel_sft
from t1.runtime.run import RunError
from t1.stages.rl import RLTrainer

TINY_DEMO = ["tiny.hidden=32", "tiny.layers=2", "tiny.heads=2", "tiny.kv_heads=2", "tiny.ffn=64",
             "sft_examples=400", "filter_prompts=16", "filter_samples=2", "rl_budget=32", "rl_steps=2",
             "rl_prompts=8", "rl_samples=4", "eval_problems=24", "budgets=[8,16,32,64]"]


@pytest.mark.slow
def test_demo_smoke(tmp_path, capsys):
    """One seed, then ``--seeds 2`` on the same directory: only the second RL run, its evaluation and the sweep
    run; summary.json holds both seeds' check numbers, their spread, and checks judged on the means."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "demo"
    assert main(["demo", *TINY_DEMO, "report_to=[tensorboard]", "--out", str(out), "--quiet"]) == 0
    s = json.loads((out / "summary.json").read_text())
    # every stage reported to the tracker, all in one run group (the demo's directory)
    for stage in ("sft", "sft_direct", "filter", "rl", "eval/sft", "eval/rl", "eval", "."):
        acc = EventAccumulator(str(out / stage / "tensorboard"))
        acc.Reload()
        config = acc.Tensors("config/text_summary")[0].tensor_proto.string_val[0].decode()
        assert f"run_group: {out}" in config, stage
    acc = EventAccumulator(str(out / "rl" / "tensorboard"))
    acc.Reload()
    assert len(acc.Scalars("reward")) == 2
    acc = EventAccumulator(str(out / "tensorboard"))
    acc.Reload()
    assert acc.Scalars("rl_accuracy")[0].value == pytest.approx(s["rl_accuracy"])
    for key in ("sft_accuracy", "rl_accuracy", "direct_sft_accuracy", "scaling", "wall_seconds", "checks"):
        assert key in s
    for key in ("sft_accuracy", "rl_accuracy", "direct_sft_accuracy"):
        assert 0.0 <= s[key] <= 1.0
    assert set(s["scaling"]) == {"sft", "rl", "direct_sft"} and s["rl_labels"] == ["rl"]
    assert [p["budget"] for p in s["scaling"]["rl"]] == [8, 16, 32, 64]
    assert all(0 <= p["accuracy"] <= 1 for p in s["scaling"]["sft"])
    _consistent_with_scaling_json(s, out)
    # one seed: the spread is that seed's number, the checks those of today
    assert s["check_std"]["rl_beats_sft_by_10_points"] == 0.0 and len(s["seeds"]) == 1
    assert s["check_values"]["under_10_minutes"] == pytest.approx(s["wall_seconds"])
    assert s["check_values"]["rl_beats_sft_by_10_points"] == pytest.approx(s["rl_accuracy"] - s["sft_accuracy"])
    for done in ("sft/final", "sft_direct/final", "filter/kept.jsonl", "rl/final", "eval/scaling.png",
                 "report.html"):
        assert (out / done).exists(), done
    err = capsys.readouterr().err
    assert "t1 demo" in err and "RL − SFT: " in err and "rl_beats_sft_by_10_where_nothing_truncates" in err
    assert "rl_finished_length_grows" in s["checks"]  # 2 RL steps: too few rows for a number
    assert s["check_values"]["rl_finished_length_grows"] is None

    # a second seed later: only its RL run, its evaluation and the sweep (which lacked it) run
    assert main(["demo", *TINY_DEMO, "--seeds", "2", "--out", str(out), "--quiet"]) == 0
    err = capsys.readouterr().err
    assert err.count("already done") == 6 and "lacks some of the models" in err  # SFT, filter, RL, 3 evals
    s = json.loads((out / "summary.json").read_text())
    assert (out / "rl_seed1" / "final").exists() and (out / "eval" / "rl_seed1" / "summary.json").exists()
    assert "seed: 1" in (out / "rl_seed1" / "config.yaml").read_text()
    assert [r["step"] for r in read_log(out / "rl_seed1" / "metrics.jsonl")] == [1, 2]
    assert s["rl_labels"] == ["rl", "rl_seed1"] and [x["seed"] for x in s["seeds"]] == [0, 1]
    assert list(s["scaling"]) == ["sft", "rl", "rl_seed1", "direct_sft"]
    _consistent_with_scaling_json(s, out)
    for k in CHECKS:
        each = [x["check_values"][k] for x in s["seeds"]]
        if None in each:
            assert s["check_mean"][k] is None and s["checks"][k] is False
            continue
        assert s["check_mean"][k] == pytest.approx(statistics.fmean(each)) == pytest.approx(s["check_values"][k])
        assert s["check_std"][k] == pytest.approx(statistics.stdev(each))
        assert (s["check_min"][k], s["check_max"][k]) == (min(each), max(each))
        assert s["checks"][k] == judge(k, s["check_mean"][k])
    assert s["rl_accuracy"] == pytest.approx(statistics.fmean(x["rl_accuracy"] for x in s["seeds"]))
    assert "(seed 1)" in err and "judged on the mean over 2 seeds" in err
    assert "seed 1</th>" in (out / "report.html").read_text()
    # a third run finds every stage done and only re-summarises
    assert main(["demo", *TINY_DEMO, "--seeds", "2", "--out", str(out), "--quiet"]) == 0
    assert capsys.readouterr().err.count("already done") == 9


def _consistent_with_scaling_json(s: dict, out: Path) -> None:
    """Accuracy and truncation per model and budget are eval/scaling.json's; the free budget is the smallest
    at which SFT and every RL model truncate at most 2 % (else the largest, flagged)."""
    curves = json.loads((out / "eval" / "scaling.json").read_text())["curves"]
    for lab, pts in s["scaling"].items():
        for p, q in zip(pts, curves[lab], strict=True):
            assert (p["budget"], p["accuracy"]) == (q["budget"], q["accuracy"])
            assert p["truncated_rate"] == pytest.approx(1 - q["finished_rate"])
    budgets = [p["budget"] for p in curves["sft"]]
    free = [b for i, b in enumerate(budgets)
            if all(1 - curves[lab][i]["finished_rate"] <= 0.02 + 1e-9 for lab in ["sft", *s["rl_labels"]])]
    expected = (free[0], True) if free else (budgets[-1], False)
    assert (s["free_budget"], s["free_budget_truncation_ok"]) == expected
    i = budgets.index(s["free_budget"])
    assert s["free_budget_truncation"]["rl"] == pytest.approx(1 - curves["rl"][i]["finished_rate"])
    gaps = [curves[lab][i]["accuracy"] - curves["sft"][i]["accuracy"] for lab in s["rl_labels"]]
    assert s["rl_minus_sft_at_free_budget"] == pytest.approx(statistics.fmean(gaps))


BUDGETS = [24, 48, 96, 128, 256]


def _curve(acc: list[float], finished: list[float]) -> list[dict]:
    return [{"budget": b, "accuracy": a, "stderr": 0.02, "finished_rate": f, "mean_tokens": 0.0}
            for b, a, f in zip(BUDGETS, acc, finished, strict=True)]


def _curves(**rl: list[float]) -> dict[str, list[dict]]:
    """SFT truncating 1 % at 256; RL (30 % truncated at 128, none at 256) and more RL seeds as given."""
    curves = {"sft": _curve([0.10, 0.20, 0.35, 0.40, 0.48], [0.20, 0.40, 0.60, 0.68, 0.99]),
              "rl": _curve([0.20, 0.34, 0.48, 0.52, 0.53], [0.30, 0.50, 0.60, 0.70, 1.00]),
              "direct_sft": _curve([0.37] * 5, [1.0] * 5)}
    curves.update({lab: _curve(acc, [0.30, 0.50, 0.60, 0.70, 1.00]) for lab, acc in rl.items()})
    return curves


def test_checks_measure_rl_where_nothing_truncates():
    """RL truncates 30 % at the training budget and 0 % at 256, SFT 1 % at 256: the free budget is 256, where
    RL leads by 5 points, not 12 — a gain only at the training budget fails the free-budget check; every check
    has its number and threshold."""
    s = summarize(_curves(), ["rl"], [0], 128, [412.0], [6.5])
    assert (s["free_budget"], s["free_budget_truncation_ok"]) == (256, True)
    assert s["free_budget_truncation"]["sft"] == pytest.approx(0.01)
    assert s["free_budget_truncation"]["rl"] == 0.0
    assert s["free_budget_accuracy"] == {"sft": 0.48, "rl": 0.53, "direct_sft": 0.37}
    assert s["scaling"]["rl"][3] == {"budget": 128, "accuracy": 0.52, "stderr": 0.02,
                                     "truncated_rate": pytest.approx(0.30), "mean_tokens": 0.0}
    assert s["rl_minus_sft_at_training_budget"] == pytest.approx(0.12)
    assert s["rl_minus_sft_at_free_budget"] == pytest.approx(0.05)
    assert s["check_values"] == pytest.approx({
        "rl_beats_sft_by_10_points": 0.12, "rl_rises_with_budget": 0.01, "rl_largest_at_least_2x_smallest": 2.65,
        "rl_at_or_above_sft_from_training_budget": 0.05, "trial_and_error_beats_direct_at_largest_budget": 0.11,
        "rl_beats_sft_by_10_where_nothing_truncates": 0.05, "rl_finished_length_grows": 6.5,
        "under_10_minutes": 412.0})
    assert s["checks"] == s["seeds"][0]["checks"]
    assert [k for k, ok in s["checks"].items() if not ok] == ["rl_beats_sft_by_10_where_nothing_truncates"]
    assert s["check_thresholds"]["rl_beats_sft_by_10_points"]["threshold"] == 0.10
    assert s["check_std"]["rl_beats_sft_by_10_points"] == 0.0
    assert s["check_min"] == s["check_max"] == s["check_mean"] == s["check_values"]
    # RL behind SFT where nothing truncates, though 12 points ahead at the training budget
    worse = _curves()
    worse["rl"][4]["accuracy"] = 0.47
    s = summarize(worse, ["rl"], [0], 128, [412.0])
    assert s["checks"]["rl_beats_sft_by_10_points"]
    assert not s["checks"]["rl_beats_sft_by_10_where_nothing_truncates"]
    assert s["check_values"]["rl_beats_sft_by_10_where_nothing_truncates"] == pytest.approx(-0.01)
    # a gain that holds where nothing truncates passes
    better = _curves()
    better["rl"][4]["accuracy"] = 0.60
    s = summarize(better, ["rl"], [0], 128, [412.0], [6.5])
    assert s["check_values"]["rl_beats_sft_by_10_where_nothing_truncates"] == pytest.approx(0.12)
    assert all(s["checks"].values())


def test_rl_and_sft_lengths_compared_where_nothing_truncates():
    """Not a check, a number beside them: RL's mean response length minus SFT's at the free budget."""
    curves = _curves()
    curves["sft"][4]["mean_tokens"], curves["rl"][4]["mean_tokens"] = 110.0, 117.5
    s = summarize(curves, ["rl"], [0], 128, [412.0], [-3.0])
    assert s["rl_minus_sft_length_at_free_budget"] == pytest.approx(7.5)
    assert s["seeds"][0]["rl_minus_sft_length_at_free_budget"] == pytest.approx(7.5)
    assert not s["checks"]["rl_finished_length_grows"]  # the paper's claim is judged by growth during RL
    del curves["rl"][4]["mean_tokens"]
    assert summarize(curves, ["rl"], [0], 128, [412.0])["rl_minus_sft_length_at_free_budget"] is None


def test_free_budget_at_exactly_2_percent_and_flagged_when_none_is_free():
    curves = _curves()
    curves["sft"][3]["finished_rate"] = curves["rl"][3]["finished_rate"] = 490 / 500  # 1 − 0.98 > 0.02 in floats
    assert free_budget(curves, ["sft", "rl"]) == (128, True)
    curves = _curves()
    curves["sft"][4]["finished_rate"] = 0.95  # SFT still truncates 5 % at the largest budget
    s = summarize(curves, ["rl"], [0], 128, [412.0])
    assert (s["free_budget"], s["free_budget_truncation_ok"]) == (256, False)
    assert s["free_budget_truncation"]["sft"] == pytest.approx(0.05)
    assert s["rl_minus_sft_at_free_budget"] == pytest.approx(0.05)  # still measured there, flagged
    assert s["check_values"]["rl_beats_sft_by_10_where_nothing_truncates"] is None  # but it is no free budget
    assert not s["checks"]["rl_beats_sft_by_10_where_nothing_truncates"]
    assert "free_budget_truncation_ok: false" in demo_table(_table_fields(s))
    # a second RL seed that truncates more moves the free budget for every seed
    curves = _curves(rl_seed1=[0.2, 0.3, 0.4, 0.5, 0.6])
    curves["sft"][3]["finished_rate"] = curves["rl"][3]["finished_rate"] = 1.0
    assert free_budget(curves, ["sft", "rl"]) == (128, True)
    assert free_budget(curves, ["sft", "rl", "rl_seed1"]) == (256, True)


def test_checks_are_judged_on_the_mean_over_seeds():
    """Seed 0 gains 12 points at the training budget, seed 1 7: the mean, 9.5, fails the +10 check though one
    seed passes; std, min and max are those of the seeds' numbers."""
    s = summarize(_curves(rl_seed1=[0.20, 0.34, 0.45, 0.47, 0.56]), ["rl", "rl_seed1"], [0, 1], 128,
                  [400.0, 380.0])
    assert [x["check_values"]["rl_beats_sft_by_10_points"] for x in s["seeds"]] == pytest.approx([0.12, 0.07])
    assert [x["checks"]["rl_beats_sft_by_10_points"] for x in s["seeds"]] == [True, False]
    k = "rl_beats_sft_by_10_points"
    assert (s["check_mean"][k], s["check_std"][k]) == pytest.approx((0.095, 0.05 / 2 ** 0.5))
    assert (s["check_min"][k], s["check_max"][k]) == pytest.approx((0.07, 0.12))
    assert s["checks"][k] is False and s["rl_minus_sft_at_training_budget"] == pytest.approx(0.095)
    assert s["check_mean"]["rl_beats_sft_by_10_where_nothing_truncates"] == pytest.approx((0.05 + 0.08) / 2)
    assert s["check_mean"]["under_10_minutes"] == 390.0 and s["checks"]["under_10_minutes"]
    assert s["checks"]["rl_rises_with_budget"]  # seed 1: min step 0.02
    table = demo_table(_table_fields(s))
    assert "judged on the mean over 2 seeds" in table and "+9.5 ± 3.5" in table and "+12.0 +7.0" in table
    # one seed without a number (smallest accuracy 0): no mean, the check fails
    s = summarize(_curves(rl_seed1=[0.0, 0.34, 0.45, 0.47, 0.56]), ["rl", "rl_seed1"], [0, 1], 128, [1.0, 1.0])
    assert s["check_mean"]["rl_largest_at_least_2x_smallest"] is None
    assert not s["checks"]["rl_largest_at_least_2x_smallest"]


def test_the_checks_thresholds_are_todays():
    assert {k: CHECKS[k][:2] for k in CHECKS} == {
        "rl_beats_sft_by_10_points": (">=", 0.10), "rl_rises_with_budget": (">=", 0.0),
        "rl_largest_at_least_2x_smallest": (">=", 2.0), "rl_at_or_above_sft_from_training_budget": (">=", 0.0),
        "trial_and_error_beats_direct_at_largest_budget": (">", 0.0),
        "rl_beats_sft_by_10_where_nothing_truncates": (">=", 0.10), "rl_finished_length_grows": (">", 0.0),
        "under_10_minutes": ("<=", 600.0)}
    assert judge("rl_beats_sft_by_10_points", 0.3 - 0.2)  # 0.09999999999999998: accuracies are k/n fractions
    assert not judge("trial_and_error_beats_direct_at_largest_budget", 0.0)
    assert judge("under_10_minutes", 600.0) and not judge("under_10_minutes", 600.5)


def test_each_seed_is_charged_the_shared_stages_and_its_own():
    st = _Stages(Path("."))
    st.times = {"SFT": 300.0, "RL with the T1 recipe": 200.0, "RL with the T1 recipe (seed 1)": 220.0,
                "evaluate rl": 5.0, "evaluate rl_seed1": 6.0, "evaluate sft": 5.0, "inference-scaling sweep": 40.0}
    cfg, runs = DemoConfig(), [("rl", 0, Path("rl")), ("rl_seed1", 1, Path("rl_seed1"))]
    assert _seed_seconds(cfg, st, 800.0, runs) == pytest.approx([800 - 226 - 10, 800 - 205 - 10])
    assert _seed_seconds(cfg, st, 800.0, runs[:1]) == [800.0]


def _table_fields(s: dict) -> dict:
    """A summarize() result with the demo's other summary fields, for demo_table."""
    return {**s, "accuracy_budget": 128, "eval_problems": 500, "stage_seconds": {}, "wall_seconds": 1.0,
            "full_budget_pass@1": {lab: 0.5 for lab in s["scaling"]}}


@pytest.mark.slow
def test_demo_killed_during_rl_resumes_it(tmp_path, capsys, monkeypatch):
    """The README's promise: an interrupted demo resumes. Stopped after RL's checkpoint at step 15, a rerun
    continues RL from it (not 'rl already holds a run') and its logs hold each step once."""
    out = tmp_path / "demo"
    args = ["demo", *TINY_DEMO, "rl_steps=16", "--out", str(out), "--quiet"]
    real = RLTrainer.rollout

    def killed_at_step_16(self, step):
        if step == 15:
            raise KeyboardInterrupt
        return real(self, step)

    monkeypatch.setattr(RLTrainer, "rollout", killed_at_step_16)
    assert main(args) == 130
    assert (out / "rl" / "checkpoints" / "step-0000015").is_dir() and not (out / "rl" / "final").exists()
    monkeypatch.undo()
    capsys.readouterr()
    assert main(args) == 0
    err = capsys.readouterr().err
    assert "resuming at step 15" in err and "already holds a run" not in err
    assert [r["step"] for r in read_log(out / "rl" / "metrics.jsonl")] == list(range(1, 17))
    assert [r["step"] for r in read_log(out / "rl" / "rollouts.jsonl")][::8] == [5, 10, 15]
    assert (out / "summary.json").exists()


def _children(pid: int) -> list[int]:
    kids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            kids.append(int(stat.parent.name))
    return kids


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_demo_killed_during_sft_takes_its_sft_processes_with_it(tmp_path):
    """SIGKILL gives the demo no chance to clean up: the kernel stops its two `t1 sft` children
    (PR_SET_PDEATHSIG) instead of leaving them training as orphans."""
    demo = subprocess.Popen([sys.executable, "-m", "t1", "demo", *TINY_DEMO, "sft_examples=20000", "--out",
                             str(tmp_path / "demo"), "--quiet"], stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 120
        while len(kids := _children(demo.pid)) < 2 and time.time() < deadline and demo.poll() is None:
            time.sleep(0.2)
        assert len(kids) == 2, "the demo did not start its two SFT processes"
    finally:
        demo.kill()
        demo.wait()
    deadline = time.time() + 20
    while any(_alive(k) for k in kids) and time.time() < deadline:
        time.sleep(0.2)
    assert not any(_alive(k) for k in kids)


def test_one_failing_sft_stops_the_other(tmp_path):
    """The demo never waits out a long run whose partner already failed, nor leaves it running: it stops it
    and names the one that failed, in one line."""
    out = tmp_path / "demo"
    out.mkdir()
    cfg = DemoConfig(out=str(out))
    long = _sft_config(cfg, out / "sft", False, 20000)
    broken = replace(long, out=str(out / "sft_direct"),
                     data=replace(long.data, source="jsonl", paths=(str(tmp_path / "missing.jsonl"),)))
    start = time.time()
    with pytest.raises(RunError, match=r"demo: SFT for .*sft_direct failed \(t1 sft: error: .*missing.jsonl"):
        parallel_sft([(out / "sft", long), (out / "sft_direct", broken)], out, progress=False)
    assert time.time() - start < 60 and not (out / "sft" / "final").exists()


def test_stage_seconds_survive_a_resumed_demo(tmp_path):
    """A demo resumed or re-summarised reports what every stage cost when it ran, not 0 s for skipped ones."""
    done = tmp_path / "a.done"
    first = _Stages(tmp_path)
    first.run("a", done, lambda: (time.sleep(0.05), done.write_text("x")))
    assert first.times["a"] >= 0.05 and first.wall(first.ran + 0.5) == pytest.approx(first.times["a"] + 0.5)
    again = _Stages(tmp_path)
    again.run("a", done, lambda: pytest.fail("a finished stage ran again"))
    assert again.times == first.times and again.ran == 0
    assert again.wall(1.0) == pytest.approx(first.times["a"] + 1.0)  # its time, plus this invocation's
    (tmp_path / "stage_seconds.json").write_text("{torn")
    assert _Stages(tmp_path).times == {}


def test_the_length_check_reads_finished_responses_only():
    """The paper's longer reasoning: the mean length of responses that end by themselves over the last 10 % of
    the RL steps against the first. A run that only stops truncating (shorter on average, finished length
    shrinking) fails; too few steps or no metric give no number."""
    def rows(finished, every=None):
        return [{"step": i + 1, "response_length": every[i] if every else f,
                 "completions/mean_terminated_length": f} for i, f in enumerate(finished)]

    growing = [60 + i * 0.5 for i in range(40)]  # 60 → 79.5
    assert finished_length_growth(rows(growing)) == pytest.approx(statistics.fmean(growing[-4:]) -
                                                                  statistics.fmean(growing[:4]))
    shrinking = [70 - i * 0.1 for i in range(40)]  # the mean length falls faster (truncation goes away)
    value = finished_length_growth(rows(shrinking, every=[95 - i for i in range(40)]))
    assert value < 0 and not judge("rl_finished_length_grows", value)
    assert finished_length_growth(rows(growing[:5])) is None  # fewer than 3 + 3 rows
    assert finished_length_growth([{"step": 1, "response_length": 9}] * 40) is None
    zero = rows(growing)
    zero[0]["completions/mean_terminated_length"] = 0.0  # a step where nothing finished: not a length
    assert finished_length_growth(zero) == pytest.approx(statistics.fmean(growing[-4:]) -
                                                         statistics.fmean(growing[1:5]))
