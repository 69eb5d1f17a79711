"""LoRA runs of `t1 sft` and `t1 rl` on the tiny model: they learn, only the adapter is saved, resume is exact
(and really resumes: from the adapter checkpoint, even after a SIGKILL), ``save_merged`` writes base + adapter,
and a LoRA run's final/ is a model every other stage can load (and fully fine-tune)."""

import json
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file

from t1 import config as C
from t1.cli import main
from t1.model.load import load
from t1.rl.config import RLConfig
from t1.runtime.run import checkpoint_dirs, load_checkpoint_state
from t1.stages.rl import train_rl
from t1.stages.sft import SFTConfig, train_sft

LORA = ["lora.rank=8", "lora.alpha=16",
        "lora.target_modules=[q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj,lm_head]"]


def sft_args(model_dir, out, *extra):
    return [f"model={model_dir}", f"out={out}", "data.num_examples=256", "train.epochs=1", "train.batch_size=16",
            "train.micro_batch_tokens=2000", "train.log_every=1", "train.precision=fp32", "train.optim.lr=0.03",
            *LORA, *extra]


def sft_cfg(model_dir, out, *extra):
    return C.load(SFTConfig, None, sft_args(model_dir, out, *extra))


def rl_cfg(model_dir, out, *extra):
    return C.load(RLConfig, None, [
        f"model={model_dir}", f"out={out}", "rollout.prompts_per_step=8", "rollout.samples_per_prompt=8",
        "rollout.max_new_tokens=8", "rollout.temperature=1.0", "rollout.top_p=1.0", "data.num_prompts=64",
        "train.optim.lr=0.005", "train.optim.warmup_steps=0", "train.rollouts_every=5", *LORA, *extra])


def rows(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def adapter(path):
    return load_file(str(path / "adapter_model.safetensors"))


TIMING = ("tokens_per_s", "elapsed_s")  # SFT's timing fields: the only ones a resumed run may not repeat


def untimed(path):
    return [{k: v for k, v in r.items() if k not in TIMING} for r in rows(path)]


def assert_resumed(capsys, out, step, before):
    """The run resumed from its step-``step`` checkpoint: it said so, set nothing aside, and kept the log rows up
    to the checkpoint as they were — their timings included, which a restart from step 0 would remake."""
    err = capsys.readouterr().err
    assert f"resuming at step {step}" in err and "set aside" not in err and "incomplete" not in err, err
    assert not list((out / "checkpoints").glob("broken-*"))
    assert rows(out / "metrics.jsonl")[:step] == [r for r in before if r["step"] <= step]


def test_lora_sft_learns_saves_the_adapter_and_resumes_exactly(untied_model_dir, tmp_path, capsys):
    full, cut = tmp_path / "full", tmp_path / "cut"
    train_sft(sft_cfg(untied_model_dir, full, "train.save_every=4", "lora.save_merged=true"), progress=False)
    losses = [r["loss"] for r in rows(full / "metrics.jsonl")]
    assert len(losses) == 16 and losses[-1] < 0.8 * losses[0], losses
    final = full / "final"
    assert (final / "adapter_config.json").exists() and not (final / "model.safetensors").exists()
    saved = adapter(final)
    assert saved and all("lora_" in k for k in saved)
    assert (final / "merged" / "model.safetensors").exists()
    # the base never moved: the merged model differs from it exactly by the adapter
    base, _ = load(untied_model_dir, dtype="float32")
    merged, _ = load(final / "merged", dtype="float32")
    via_adapter, _ = load(final, dtype="float32")  # an adapter dir loads as base + adapter
    m, a, b = merged.state_dict(), via_adapter.state_dict(), base.state_dict()
    assert all(torch.allclose(m[k], a[k], atol=1e-6) for k in m)
    q = "model.layers.0.self_attn.q_proj.weight"
    assert not torch.equal(m[q], b[q])
    assert torch.equal(m["model.embed_tokens.weight"], b["model.embed_tokens.weight"])  # no adapter there

    train_sft(sft_cfg(untied_model_dir, cut, "train.save_every=4", "train.max_steps=6"), progress=False)
    before = rows(cut / "metrics.jsonl")
    capsys.readouterr()
    train_sft(sft_cfg(untied_model_dir, cut, "train.save_every=4"), resume=True, progress=False)
    assert_resumed(capsys, cut, 6, before)
    assert (cut / "config.yaml").read_text().startswith("# resumed at step 6: train.max_steps 6 → 0\n")
    x, y = adapter(full / "final"), adapter(cut / "final")
    assert x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x)
    assert [r["loss"] for r in rows(cut / "metrics.jsonl")] == losses


def test_lora_rl_reward_rises_with_an_adapter_anchor(untied_model_dir, tmp_path):
    """As tests/stages/test_rl.py's learnable reward (finish within 8 tokens), training only the adapter."""
    out = tmp_path / "run"
    history = train_rl(rl_cfg(untied_model_dir, out, "train.steps=30", "train.save_every=30"), progress=False)
    first = sum(h["reward"] for h in history[:5]) / 5
    last = sum(h["reward"] for h in history[-5:]) / 5
    assert first < -0.6 and last > first + 0.4, (first, last)
    assert rows(out / "metrics.jsonl")[-1]["kl"] != 0  # the adapter's EMA lags the adapter
    state = load_checkpoint_state(out / "checkpoints" / "step-0000030")
    assert state["anchor"] and all("lora_" in k for k in state["anchor"])  # the base is shared, not saved
    assert (out / "final" / "adapter_model.safetensors").exists()


def test_lora_rl_resume_equals_uninterrupted(untied_model_dir, tmp_path, capsys):
    full, cut = tmp_path / "full", tmp_path / "cut"
    train_rl(rl_cfg(untied_model_dir, full, "train.steps=4", "train.save_every=2"), progress=False)
    train_rl(rl_cfg(untied_model_dir, cut, "train.steps=2", "train.save_every=2"), progress=False)
    before = rows(cut / "metrics.jsonl")
    capsys.readouterr()
    train_rl(rl_cfg(untied_model_dir, cut, "train.steps=4", "train.save_every=2"), resume=True, progress=False)
    assert_resumed(capsys, cut, 2, before)  # RL's rows hold time_sample, time_train, …: kept as they were
    a, b = adapter(full / "final"), adapter(cut / "final")
    assert all(torch.equal(a[k], b[k]) for k in a)
    for key in ("reward", "kl"):
        assert [r[key] for r in rows(cut / "metrics.jsonl")] == [r[key] for r in rows(full / "metrics.jsonl")]


@pytest.mark.slow
def test_lora_sft_killed_after_a_checkpoint_resumes_exactly(untied_model_dir, tmp_path, capsys):
    """`t1 sft` with LoRA killed (SIGKILL: no cleanup) once its first checkpoint is in place, then `--resume`:
    the adapter is bit-identical to an uninterrupted run's and so are the metrics, timings aside."""
    extra = ("data.num_examples=128", "train.save_every=2")
    full, cut = tmp_path / "full", tmp_path / "cut"
    train_sft(sft_cfg(untied_model_dir, full, *extra), progress=False)
    proc = subprocess.Popen([sys.executable, "-m", "t1", "sft", *sft_args(untied_model_dir, cut, *extra),
                             "--quiet"], stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 240
        while not checkpoint_dirs(cut) and proc.poll() is None and time.time() < deadline:
            time.sleep(0.05)
        assert checkpoint_dirs(cut) and proc.poll() is None, "no checkpoint before the run ended"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert not (cut / "final").exists()
    step = int(checkpoint_dirs(cut)[-1].name.split("-")[1])
    capsys.readouterr()
    assert main(["sft", *sft_args(untied_model_dir, cut, *extra), "--resume", "--quiet"]) == 0
    err = capsys.readouterr().err
    assert f"resuming at step {step}" in err and "set aside" not in err, err
    x, y = adapter(full / "final"), adapter(cut / "final")
    assert x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x)
    assert untimed(cut / "metrics.jsonl") == untimed(full / "metrics.jsonl")


def test_rl_fully_fine_tunes_a_lora_sft_runs_final(untied_model_dir, tmp_path):
    """The natural SFT → RL path: `t1 rl model=<a LoRA SFT run's final/>` without LoRA. That final/ is an
    adapter, loaded as base + adapter merged; full fine-tuning must train every weight of it."""
    sft_out, rl_out = tmp_path / "sft", tmp_path / "rl"
    train_sft(sft_cfg(untied_model_dir, sft_out, "data.num_examples=32"), progress=False)
    train_rl(rl_cfg(sft_out / "final", rl_out, "lora.rank=0", "train.steps=2"), progress=False)
    start, _ = load(sft_out / "final", dtype="float32")
    before = start.state_dict()
    after = load_file(str(rl_out / "final" / "model.safetensors"))
    for name in ("model.embed_tokens.weight", "model.layers.0.self_attn.q_proj.weight", "lm_head.weight"):
        assert not torch.equal(before[name], after[name]), name
