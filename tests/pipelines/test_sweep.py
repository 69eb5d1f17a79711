"""`t1 sweep` (t1.pipelines.sweep, t1.pipelines.sweep_report): the grid, validation before any run, a tiny RL
sweep over two values × two seeds with scaling, resume by skipping, the report."""

import json
import shutil
from pathlib import Path

import pytest

from t1 import config as C
from t1.cli import main
from t1.pipelines.sweep import parse_grid, point_dir, run_numbers, split_values, spread
from t1.runtime.children import usable_cores

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def test_values_split_at_top_level_commas_only():
    assert split_values("4,8,16") == ["4", "8", "16"]
    assert split_values("[64,128]") == ["[64,128]"]
    assert split_values("[1,2],[3]") == ["[1,2]", "[3]"]
    assert split_values("{a: 1, b: 2},{a: 3}") == ["{a: 1, b: 2}", "{a: 3}"]
    assert split_values('"a, b",c') == ['"a, b"', "c"]
    assert split_values("don't,do") == ["don't", "do"]  # an apostrophe inside a word opens no quote
    assert split_values("0.5") == ["0.5"]


def test_grid_swept_fields_and_plain_overrides():
    g = parse_grid(["base.yaml", "rollout.samples_per_prompt=4,8", "budgets=[64,128]", "train.seed=0,1",
                    "train.steps=3"])
    assert g.config == "base.yaml"
    assert g.swept == (("rollout.samples_per_prompt", ("4", "8")), ("train.seed", ("0", "1")))
    assert g.overrides == ("budgets=[64,128]", "train.steps=3")
    assert len(g.points()) == 4 and g.points()[1] == (("rollout.samples_per_prompt", "4"), ("train.seed", "1"))
    assert parse_grid(["budgets=[1,2],[3]"]).swept == (("budgets", ("[1,2]", "[3]")),)
    for bad, msg in ((["out=a,b"], "--out"), (["k=1,,2"], "empty value"), (["k=1,1"], "repeats"),
                     (["k=1,2", "k=3"], "given twice"), (["stray"], "expected CONFIG.yaml")):
        with pytest.raises(C.ConfigError, match=msg):
            parse_grid(bad)


def test_folder_names_are_sanitised():
    assert point_dir((("rollout.samples_per_prompt", "4"), ("x", "a/b c"))) == \
        "rollout.samples_per_prompt=4,x=a_b_c"
    long = point_dir((("model", "/very/" + "long/" * 40 + "path"),))
    assert len(long) <= 100 and "/" not in long
    assert spread([1.0, 3.0]) == {"mean": 2.0, "std": pytest.approx(2 ** 0.5), "min": 1.0, "max": 3.0, "n": 2}


def _rl_yaml(tmp_path, model_dir) -> Path:
    path = tmp_path / "rl.yaml"
    path.write_text(f"model: {json.dumps(str(model_dir))}\nout: runs/unused\n"
                    "rollout: {prompts_per_step: 2, samples_per_prompt: 2, max_new_tokens: 6, temperature: 1.0, "
                    "top_p: 1.0}\ndata: {num_prompts: 8}\n"
                    "train: {steps: 3, save_every: 2, rollouts_every: 0, optim: {warmup_steps: 0, lr: 0.01}}\n")
    return path


def test_a_bad_value_fails_in_one_line_before_any_run(tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "sweep"
    rc = main(["sweep", "rl", str(_rl_yaml(tmp_path, tiny_model_dir)), "rollout.samples_per_prompt=4,1",
               "--out", str(out), "--quiet"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1, err
    assert "rollout.samples_per_prompt=1" in err and "must be ≥ 2" in err
    assert not out.exists()  # the good first value did not run either
    scale = tmp_path / "scale.yaml"
    scale.write_text("bench: countdown\nbudgets: [0]\n")
    rc = main(["sweep", "rl", str(_rl_yaml(tmp_path, tiny_model_dir)), "rollout.samples_per_prompt=2,4",
               "--scale", str(scale), "--out", str(out)])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "budgets" in err and len(err.splitlines()) == 1 and not out.exists()


def test_rl_sweep_two_values_two_seeds_with_scaling_then_resume(tiny_model_dir, tmp_path, capfd):
    cfg, scale, out = _rl_yaml(tmp_path, tiny_model_dir), tmp_path / "scale.yaml", tmp_path / "sweep"
    scale.write_text("bench: countdown\nlimit: 4\nbudgets: [4, 8]\n")
    args = ["sweep", "rl", str(cfg), "rollout.samples_per_prompt=2,4", "train.steps=2", "--seeds", "2",
            "--scale", str(scale), "--out", str(out), "--quiet"]
    assert main([*args, "--jobs", "2"]) == 0  # two children at a time, 1 thread each, output in seed<s>.log
    err = capfd.readouterr().err
    assert "run 4/4: rollout.samples_per_prompt=4 seed 1" in err and "accuracy@8" in err
    assert f"2 runs at a time, {max(1, usable_cores() // 2)} thread(s) each" in err
    assert err.count(": finished") == 4
    log = (out / "rollout.samples_per_prompt=4" / "seed1.log").read_text()
    assert log.count("$ ") == 2 and " rl " in log and " scale " in log and "--quiet" in log
    runs = [out / f"rollout.samples_per_prompt={k}" / f"seed{s}" for k in (2, 4) for s in (0, 1)]
    assert all((r / "final" / "model.safetensors").exists() and (r / "scale" / "scaling.json").exists()
               for r in runs)
    assert "samples_per_prompt: 4" in (runs[3] / "config.yaml").read_text()
    assert main(["rl", str(runs[3] / "config.yaml"), "--print-config"]) == 0  # a path with '=' is a config
    assert "samples_per_prompt: 4" in capfd.readouterr().out
    assert "  seed: 1\n" in (runs[3] / "config.yaml").read_text().split("train:")[1]

    result = json.loads((out / "sweep.json").read_text())
    assert [p["label"] for p in result["points"]] == [f"rollout.samples_per_prompt={k}" for k in (2, 4)]
    for p in result["points"]:
        assert [r["seed"] for r in p["runs"]] == [0, 1] and p["budgets"] == [4, 8]
        assert set(p["summary"]) == {"reward", "accuracy", "response_length", "entropy", "accuracy@4",
                                     "accuracy@8", "truncated@4", "truncated@8", "grad_norm_max",
                                     "skipped_steps"}  # 2 steps: no length growth
        for r in p["runs"]:  # truncation at each budget, from the run's own scaling curve
            curve = json.loads((out / r["dir"] / "scale" / "scaling.json").read_text())["curves"]
            pts = next(iter(curve.values()))
            assert [r["numbers"][f"truncated@{q['budget']}"] for q in pts] == [1 - q["finished_rate"] for q in pts]
        for s in p["summary"].values():
            assert s["n"] == 2 and s["min"] <= s["mean"] <= s["max"] and s["std"] >= 0
    page = (out / "sweep.html").read_text()
    assert page.count("data:image/png;base64,") == 4  # accuracy vs budget; reward, accuracy, length vs step
    assert "Accuracy vs thinking budget" in page and "Response length (tokens) vs step" in page

    stamps = [(r / "final" / "model.safetensors").stat().st_mtime_ns for r in runs]
    assert main(args) == 0  # everything is done: every run is skipped
    err = capfd.readouterr().err
    assert err.count("done, skipped") == 4 and "M parameters" not in err and "seed 0 →" not in err
    assert stamps == [(r / "final" / "model.safetensors").stat().st_mtime_ns for r in runs]
    assert json.loads((out / "sweep.json").read_text())["points"] == result["points"]

    shutil.rmtree(runs[1] / "final")  # an interrupted run: it resumes from its newest checkpoint
    shutil.rmtree(runs[1] / "scale")  # (one job at a time: the child's output is this process's)
    assert main(args) == 0
    err = capfd.readouterr().err
    assert err.count("done, skipped") == 3 and "resuming at step 2" in err and (runs[1] / "final").exists()

    (out / "sweep.html").unlink()
    assert main(["report", str(out)]) == 0 and (out / "sweep.html").exists()


def test_demo_scale_config_is_the_demos_scaling_protocol():
    from t1.pipelines.demo import DemoConfig
    from t1.stages.scale import ScaleConfig

    demo, cfg = DemoConfig(), C.load(ScaleConfig, CONFIGS / "demo_scale.yaml")
    assert cfg.bench == "countdown" and cfg.budgets == demo.budgets and cfg.limit == demo.eval_problems
    assert (cfg.n, cfg.temperature, cfg.top_p, cfg.seed) == (1, 1.0, 1.0, demo.seed + 11)
    assert cfg.models == ("runs/demo/rl/final",)


def test_a_rerun_with_another_override_is_refused_and_a_longer_one_resumes(tiny_model_dir, tmp_path, capsys):
    """Runs that finished under one config and a sweep command that says another: refused in one line naming
    the run and the fields, before anything runs (the old numbers are neither reported as the new config's
    nor replaced); a longer run (train.steps, constant lr) is not finished any more; logging changes are."""
    from dataclasses import replace

    from t1.pipelines.sweep import _done, check_reruns, plan
    from t1.rl.config import resolve_anchor

    cfg, out = _rl_yaml(tmp_path, tiny_model_dir), tmp_path / "sweep"
    runs = plan("rl", parse_grid([str(cfg), "rollout.samples_per_prompt=2,4"]), out)
    for run in runs:  # as if each had run: its config recorded, a final checkpoint and final/
        (run.dir / "checkpoints" / "step-0000003").mkdir(parents=True)
        (run.dir / "checkpoints" / "step-0000003" / "trainer_state.pt").write_bytes(b"")
        (run.dir / "final").mkdir()
        C.save(resolve_anchor(run.cfg)[0], run.dir / "config.yaml")  # as `t1 rl` records it
    check_reruns("rl", runs)
    assert all(_done("rl", r) for r in runs)

    # another seed is another folder (seed5/): nothing was run there, nothing to refuse
    check_reruns("rl", plan("rl", parse_grid([str(cfg), "rollout.samples_per_prompt=2,4", "train.optim.lr=0.02",
                                             "train.seed=5"]), out))
    again = plan("rl", parse_grid([str(cfg), "rollout.samples_per_prompt=2,4", "train.optim.lr=0.02"]), out)
    with pytest.raises(C.ConfigError) as e:
        check_reruns("rl", again)
    assert str(e.value) == (f"sweep: run rollout.samples_per_prompt=2 seed 0 ({runs[0].dir}) was run with a "
                            "different config: train.optim.lr 0.01 → 0.02; re-running it would mix two runs, "
                            "skipping it would report the old one's numbers — use another --out or drop the "
                            "override")
    assert main(["sweep", "rl", str(cfg), "rollout.samples_per_prompt=2,4", "train.optim.lr=0.02", "--out",
                 str(out), "--quiet"]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1].startswith("t1 sweep: error: sweep: run ")

    longer = [replace(r, cfg=replace(r.cfg, train=replace(r.cfg.train, steps=5, log_every=2))) for r in runs]
    check_reruns("rl", longer)
    assert not any(_done("rl", r) for r in longer)
    chatty = [replace(r, cfg=replace(r.cfg, train=replace(r.cfg.train, log_every=2))) for r in runs]
    assert all(_done("rl", r) for r in chatty)
    shorter = [replace(r, cfg=replace(r.cfg, train=replace(r.cfg.train, steps=2))) for r in runs]
    with pytest.raises(C.ConfigError, match=r"train.steps 3 → 2 \(the checkpoint is at step 3 already\)"):
        check_reruns("rl", shorter)


def test_rl_numbers_carry_entropy_and_the_finished_length_growth(tmp_path):
    """An RL run's numbers: last-10 % means (entropy among them), how much its finished responses grew, and its
    stability (largest gradient norm, skipped updates)."""
    rows = [{"step": i + 1, "reward": 0.5, "accuracy": 0.5, "response_length": 100.0, "entropy": 0.3 - i / 100,
             "completions/mean_terminated_length": 90.0 + i, "grad_norm": 1.0 + (i == 7) * 9, "skipped": i == 3}
            for i in range(30)]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    numbers, budgets = run_numbers("rl", tmp_path)
    assert budgets == [] and numbers["entropy"] == pytest.approx(0.3 - 28 / 100)  # mean of the last 3 rows
    assert numbers["finished_length_growth"] == pytest.approx((117 + 118 + 119) / 3 - (90 + 91 + 92) / 3)
    assert numbers["grad_norm_max"] == 10.0 and numbers["skipped_steps"] == 1.0
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[:5]))
    assert "finished_length_growth" not in run_numbers("rl", tmp_path)[0]  # too few steps to say
