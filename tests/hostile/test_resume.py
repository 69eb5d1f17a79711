"""`--resume` with a changed config (issue "Hardening, round 2", "Lost work"): a field that shapes the run is
refused in one line naming it, old → new, and nothing in the run directory changes; a longer run resumes; a
sweep run again with another override is refused in one line naming the run. Tiny runs: a checkpoint after
each of 2 steps."""

from __future__ import annotations

import shutil

import pytest

from t1.cli import main

RL = ["rollout.prompts_per_step=2", "rollout.samples_per_prompt=2", "rollout.max_new_tokens=4",
      "rollout.temperature=1.0", "rollout.top_p=1.0", "data.num_prompts=8", "train.steps=2", "train.save_every=1",
      "train.rollouts_every=0", "train.optim.warmup_steps=0", "train.optim.lr=0.01"]
SFT = ["data.num_examples=32", "train.batch_size=8", "train.micro_batch_tokens=600", "train.max_steps=2",
       "train.save_every=1", "train.log_every=1", "train.precision=fp32", "train.optim.lr=0.003"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_model_dir):
    """One finished tiny `t1 rl` run and one `t1 sft` run (full fine-tuning of the tiny model), to copy."""
    root = tmp_path_factory.mktemp("resume")
    for stage, args in (("rl", RL), ("sft", SFT)):
        assert main([stage, f"model={tiny_model_dir}", f"out={root / stage}", *args, "--quiet"]) == 0
    return root


def snapshot(out):
    """What a refused command must leave as it was: config.yaml, the logs and every checkpoint's files."""
    return {p.relative_to(out).as_posix(): p.read_bytes() for p in sorted(out.rglob("*"))
            if p.is_file() and p.name != ".lock"}


CASES = [  # stage, overrides on --resume, exit code, what stderr says (the one line when refused)
    ("rl", ["train.optim.lr=0.002"], 2, ["train.optim.lr 0.01 → 0.002", "resuming would mix two runs"]),
    ("rl", ["train.seed=3"], 2, ["train.seed 0 → 3"]),
    ("rl", ["rollout.samples_per_prompt=4"], 2, ["rollout.samples_per_prompt 2 → 4"]),
    ("rl", ["model={other}"], 2, ["model {model} → {other}"]),
    ("rl", ["lora.rank=4"], 2, ["lora.rank 0 → 4"]),
    ("rl", ["train.optim.lr=0.002", "rollout.samples_per_prompt=4"], 2,
     ["rollout.samples_per_prompt 2 → 4, train.optim.lr 0.01 → 0.002"]),
    ("rl", ["train.steps=4", "train.optim.schedule=cosine"], 2, ["train.steps 2 → 4 (the cosine lr schedule"]),
    ("rl", ["train.steps=1"], 2, ["train.steps 2 → 1 (the checkpoint is at step 2 already)"]),
    ("sft", ["train.optim.lr=0.01"], 2, ["train.optim.lr 0.003 → 0.01"]),
    ("sft", ["lora.rank=4"], 2, ["lora.rank 0 → 4"]),
    ("sft", ["data.num_examples=48"], 2, ["data.num_examples 32 → 48"]),
    ("rl", ["train.steps=3", "train.log_every=2"], 0, ["resuming at step 2"]),  # longer, constant lr: allowed
    ("sft", ["train.max_steps=3", "report_to=[tensorboard]"], 0, ["resuming at step 2"]),
]


@pytest.mark.parametrize("stage, change, code, needles", CASES)
def test_resume_with_a_changed_config(t1, runs, tiny_model_dir, untied_model_dir, tmp_path, stage, change, code,
                                      needles):
    out = tmp_path / "run"
    shutil.copytree(runs / stage, out)  # a moved run: `out` differs, which is allowed
    before = snapshot(out)
    fill = {"model": tiny_model_dir, "other": untied_model_dir}
    change = [c.format(**fill) for c in change]
    result = t1(stage, f"model={tiny_model_dir}", *(RL if stage == "rl" else SFT), *change, f"out={out}",
                "--resume", "--quiet")
    assert result.code == code, result.err[-3000:]
    if code:
        line = result.one_line(f"t1 {stage}: error: out: {out} was run with a different config: ",
                               *(n.format(**fill) for n in needles))
        assert line.endswith("start a new out or drop the override")
        assert snapshot(out) == before  # nothing moved, nothing rewritten
        return
    for needle in needles:
        assert needle in result.err
    steps = int(next(c for c in change if c.startswith(("train.steps=", "train.max_steps="))).split("=")[1])
    assert (out / "checkpoints" / f"step-{steps:07d}").is_dir() and (out / "final").is_dir()
    assert (out / "config.yaml").read_text().startswith("# resumed at step 2: ")


def test_a_sweep_run_again_with_another_override_is_one_line(t1, tiny_model_dir, tmp_path):
    out = tmp_path / "sweep"
    args = ["sweep", "rl", f"model={tiny_model_dir}", *[a for a in RL if not a.startswith(("rollout.samples",
            "train.optim.lr"))], "rollout.samples_per_prompt=2,3", "--out", out, "--quiet"]
    assert t1(*args, "train.optim.lr=0.01").code == 0
    before = snapshot(out)
    result = t1(*args, "train.optim.lr=0.02")
    assert result.code == 2
    line = result.one_line(f"t1 sweep: error: sweep: run rollout.samples_per_prompt=2 seed 0 "
                           f"({out}/rollout.samples_per_prompt=2/seed0) was run with a different config: "
                           "train.optim.lr 0.01 → 0.02; ")
    assert line.endswith("use another --out or drop the override")
    assert snapshot(out) == before
