"""Stages report to experiment trackers (report_to) and write completion tables: what the trackers hold equals
the run's own files, read back with TensorBoard's and MLflow's own readers (offline, no account)."""

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from t1 import config as C
from t1.cli import main
from t1.config import ConfigError
from t1.rl.config import RLConfig
from t1.stages.rl import train_rl


def rl_cfg(model_dir, out, *extra):
    return C.load(RLConfig, None, [
        f"model={model_dir}", f"out={out}", "rollout.prompts_per_step=4", "rollout.samples_per_prompt=4",
        "rollout.max_new_tokens=8", "rollout.temperature=1.0", "rollout.top_p=1.0", "data.num_prompts=16",
        "train.optim.lr=0.01", "train.optim.warmup_steps=0", "train.rollouts_every=2", "train.rollouts_kept=3",
        *extra])


def rows(path):
    return [json.loads(line) for line in Path(path).read_text().splitlines()]


def scalars(logdir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(logdir), size_guidance={"scalars": 0, "tensors": 0})
    acc.Reload()
    return acc


def test_rl_metrics_and_completions_reach_tensorboard(tiny_model_dir, tmp_path):
    out = tmp_path / "run"
    train_rl(rl_cfg(tiny_model_dir, out, "train.steps=4", "report_to=[tensorboard]", "run_group=g"),
             progress=False)
    m = rows(out / "metrics.jsonl")
    acc = scalars(out / "tensorboard")
    for key in ("reward", "reward_std", "frac_reward_zero_std", "completions/mean_length", "entropy", "kl",
                "num_tokens"):
        assert [(e.step, e.value) for e in acc.Scalars(key)] == [(r["step"], pytest.approx(r[key])) for r in m]
    # TRL's num_tokens: prompt + completion tokens so far, growing every step
    assert all(b["num_tokens"] > a["num_tokens"] > 0 for a, b in zip(m, m[1:]))
    config = acc.Tensors("config/text_summary")[0].tensor_proto.string_val[0].decode()
    assert "samples_per_prompt: 4" in config and "run_group: g" in config
    # every rollouts_every steps: all the step's completions in parquet, the first rollouts_kept in the table
    files = sorted(p.name for p in (out / "completions").iterdir())
    assert files == ["step_00002.parquet", "step_00004.parquet"]
    table = pq.read_table(out / "completions" / "step_00004.parquet").to_pylist()
    assert len(table) == 16
    assert {"prompt", "response", "reward", "penalty", "tokens", "advantage", "correct"} <= set(table[0])
    assert all(r["penalty"] in ("", "truncated", "repetitive", "garbage") for r in table)
    assert all((r["penalty"] != "") == (r["reward"] == -1.0) for r in table)
    assert abs(sum(r["advantage"] for r in table)) < 1e-4  # RLOO advantages centre within each group
    shown = acc.Tensors("completions/text_summary")
    assert [t.step for t in shown] == [2, 4]
    assert len(shown[-1].tensor_proto.string_val[0].decode().splitlines()) == 2 + 3  # header, rule, 3 rows
    assert rows(out / "rollouts.jsonl")[-3:] == [{k: v for k, v in r.items()} for r in table[:3]]


def test_rl_resume_keeps_num_tokens_and_rewrites_completions(tiny_model_dir, tmp_path):
    full, cut = tmp_path / "full", tmp_path / "cut"
    train_rl(rl_cfg(tiny_model_dir, full, "train.steps=4", "train.save_every=2"), progress=False)
    train_rl(rl_cfg(tiny_model_dir, cut, "train.steps=3", "train.save_every=2"), progress=False)
    assert (cut / "completions" / "step_00002.parquet").exists()
    train_rl(rl_cfg(tiny_model_dir, cut, "train.steps=4", "train.save_every=2"), resume=True, progress=False)
    assert [r["num_tokens"] for r in rows(cut / "metrics.jsonl")] == \
        [r["num_tokens"] for r in rows(full / "metrics.jsonl")]
    for name in ("step_00002.parquet", "step_00004.parquet"):
        assert pq.read_table(cut / "completions" / name).equals(pq.read_table(full / "completions" / name))


def test_sft_reports_to_mlflow(tmp_path, monkeypatch):
    from mlflow.tracking import MlflowClient

    for var in ("MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_NAME"):
        monkeypatch.delenv(var, raising=False)
    out = tmp_path / "sft"
    assert main(["sft", f"out={out}", "tiny.hidden=32", "tiny.layers=2", "tiny.heads=2", "tiny.kv_heads=2",
                 "tiny.ffn=64", "data.num_examples=64", "train.batch_size=16", "train.log_every=1",
                 "report_to=[mlflow]", "--quiet"]) == 0
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    client = MlflowClient(tracking_uri=(out / "mlruns").resolve().as_uri())
    run_id = (out / ".mlflow_run_id").read_text().strip()
    history = client.get_metric_history(run_id, "loss")
    assert sorted((h.step, h.value) for h in history) == \
        [(r["step"], pytest.approx(r["loss"])) for r in rows(out / "metrics.jsonl")]
    assert client.get_run(run_id).data.params["train.batch_size"] == "16"


def test_eval_and_scale_report_their_results(tiny_model_dir, tmp_path):
    ev = tmp_path / "eval"
    assert main(["eval", f"model={tiny_model_dir}", "bench=[countdown]", "limit=3", f"out={ev}",
                 "max_new_tokens=8", "n=2", "report_to=tensorboard", "--quiet"]) == 0
    acc = scalars(ev / "tensorboard")
    summary = json.loads((ev / "summary.json").read_text())["benchmarks"]["countdown"]
    assert acc.Scalars("countdown/pass@1")[0].value == pytest.approx(summary["pass@1"])
    assert "samples/countdown/text_summary" in acc.Tags()["tensors"]
    sc = tmp_path / "scale"
    assert main(["scale", f"models=[{tiny_model_dir}]", "labels=[tiny]", "bench=countdown", "limit=3",
                 "budgets=[4,8]", f"out={sc}", "report_to=[tensorboard]", "--quiet"]) == 0
    curve = json.loads((sc / "scaling.json").read_text())["curves"]["tiny"]
    acc = scalars(sc / "tensorboard")
    numbers = [k for k, v in curve[0].items() if k != "budget" and isinstance(v, (int, float))]
    assert {"accuracy", "mean_tokens"} <= set(numbers)
    for key in numbers:
        got = [(e.step, e.value) for e in acc.Scalars(f"scale/{key}/tiny")]
        assert got == [(p["budget"], pytest.approx(p[key])) for p in curve], key


def test_a_missing_tracker_library_stops_the_stage_before_any_work(tiny_model_dir, tmp_path, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "wandb", None)
    with pytest.raises(ConfigError, match=r"report_to: wandb needs its library: pip install 't1\[wandb\]'"):
        train_rl(rl_cfg(tiny_model_dir, tmp_path / "run", "train.steps=1", "report_to=[wandb]"), progress=False)
    assert not (tmp_path / "run" / "metrics.jsonl").exists()
