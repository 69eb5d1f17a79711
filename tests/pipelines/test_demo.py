"""A smoke run of the whole demo with tiny settings: every stage runs and summary.json has every field."""

import json
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest

from t1.cli import main
from t1.io import read_log
from t1.pipelines.demo import DemoConfig, _sft_config, parallel_sft
from t1.runtime.run import RunError
from t1.stages.rl import RLTrainer

TINY_DEMO = ["tiny.hidden=32", "tiny.layers=2", "tiny.heads=2", "tiny.kv_heads=2", "tiny.ffn=64",
             "sft_examples=400", "filter_prompts=16", "filter_samples=2", "rl_budget=32", "rl_steps=2",
             "rl_prompts=8", "rl_samples=4", "eval_problems=24", "budgets=[8,16,32,64]"]


@pytest.mark.slow
def test_demo_smoke(tmp_path, capsys):
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
    assert set(s["scaling"]) >= {"sft", "rl"}
    assert [p["budget"] for p in s["scaling"]["rl"]] == [8, 16, 32, 64]
    assert all(0 <= p["accuracy"] <= 1 for p in s["scaling"]["sft"])
    for done in ("sft/final", "sft_direct/final", "filter/kept.jsonl", "rl/final", "eval/scaling.png",
                 "report.html"):
        assert (out / done).exists(), done
    assert "t1 demo" in capsys.readouterr().err
    # a second run finds every stage done and only re-summarises
    assert main(["demo", *TINY_DEMO, "--out", str(out), "--quiet"]) == 0
    assert "already done" in capsys.readouterr().err


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
