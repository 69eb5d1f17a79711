"""LoRA runs of `t1 sft` and `t1 rl` on the tiny model: they learn, only the adapter is saved, resume is exact,
``save_merged`` writes base + adapter, and a LoRA run's final/ is a model every other stage can load."""

import json

import torch
from safetensors.torch import load_file

from t1 import config as C
from t1.model.load import load
from t1.rl.config import RLConfig
from t1.runtime.run import load_checkpoint_state
from t1.stages.rl import train_rl
from t1.stages.sft import SFTConfig, train_sft

LORA = ["lora.rank=8", "lora.alpha=16",
        "lora.target_modules=[q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj,lm_head]"]


def sft_cfg(model_dir, out, *extra):
    return C.load(SFTConfig, None, [f"model={model_dir}", f"out={out}", "data.num_examples=256", "train.epochs=1",
                                    "train.batch_size=16", "train.micro_batch_tokens=2000", "train.log_every=1",
                                    "train.precision=fp32", "train.optim.lr=0.03", *LORA, *extra])


def rl_cfg(model_dir, out, *extra):
    return C.load(RLConfig, None, [
        f"model={model_dir}", f"out={out}", "rollout.prompts_per_step=8", "rollout.samples_per_prompt=8",
        "rollout.max_new_tokens=8", "rollout.temperature=1.0", "rollout.top_p=1.0", "data.num_prompts=64",
        "train.optim.lr=0.005", "train.optim.warmup_steps=0", "train.rollouts_every=5", *LORA, *extra])


def rows(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def adapter(path):
    return load_file(str(path / "adapter_model.safetensors"))


def test_lora_sft_learns_saves_the_adapter_and_resumes_exactly(untied_model_dir, tmp_path):
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
    train_sft(sft_cfg(untied_model_dir, cut, "train.save_every=4"), resume=True, progress=False)
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


def test_lora_rl_resume_equals_uninterrupted(untied_model_dir, tmp_path):
    full, cut = tmp_path / "full", tmp_path / "cut"
    train_rl(rl_cfg(untied_model_dir, full, "train.steps=4", "train.save_every=2"), progress=False)
    train_rl(rl_cfg(untied_model_dir, cut, "train.steps=2", "train.save_every=2"), progress=False)
    train_rl(rl_cfg(untied_model_dir, cut, "train.steps=4", "train.save_every=2"), resume=True, progress=False)
    a, b = adapter(full / "final"), adapter(cut / "final")
    assert all(torch.equal(a[k], b[k]) for k in a)
    for key in ("reward", "kl"):
        assert [r[key] for r in rows(cut / "metrics.jsonl")] == [r[key] for r in rows(full / "metrics.jsonl")]
