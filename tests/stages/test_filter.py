import json

from t1 import config as C
from t1.rl.config import RLConfig
from t1.stages.filter import FilterConfig, keep, run_filter
from t1.stages.rl import train_rl


def test_keep_interval():
    cfg = FilterConfig(model="m")
    assert [keep(r, cfg) for r in (0.0, 0.0625, 0.3, 0.3125, 1.0)] == [False, True, True, False, False]
    assert keep(0.0, FilterConfig(model="m", include_min=True))


def test_filter_writes_pass_rates_and_kept_prompts_that_rl_reads(tiny_model_dir, tmp_path):
    """A random tiny model solves no Countdown problem, so every pass rate is 0 and the interval [0, 0] keeps
    them all: checks the files, the summary, and that kept.jsonl is a valid RL prompt source."""
    out = tmp_path / "f"
    cfg = C.load(FilterConfig, None, [f"model={tiny_model_dir}", f"out={out}", "data.num_prompts=12", "samples=4",
                                      "max_new_tokens=8", "include_min=true", "max_pass=0.0"])
    summary = run_filter(cfg, progress=False)
    rates = [json.loads(line) for line in (out / "pass_rates.jsonl").read_text().splitlines()]
    kept = [json.loads(line) for line in (out / "kept.jsonl").read_text().splitlines()]
    assert len(rates) == 12 and all(r["pass_rate"] == 0.0 for r in rates)
    assert summary == {"prompts": 12, "kept": 12, "mean_pass_rate": 0.0, "all_wrong": 12, "all_right": 0}
    assert {"problem", "numbers", "target", "pass_rate"} <= set(kept[0])
    # the kept file is a valid RL prompt source
    cfg = C.load(RLConfig, None, [f"model={tiny_model_dir}", f"out={tmp_path / 'rl'}", "data.source=jsonl",
                                  f"data.paths=[{out / 'kept.jsonl'}]", "rollout.prompts_per_step=4",
                                  "rollout.samples_per_prompt=2", "rollout.max_new_tokens=4", "train.steps=1"])
    assert len(train_rl(cfg, progress=False)) == 1
