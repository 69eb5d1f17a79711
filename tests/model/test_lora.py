"""LoRA through PEFT: t1's own forward and sampler see the adapters, merged weights equal base + adapter."""

import json

import pytest
import torch
from transformers import AutoModelForCausalLM

from t1.config import ConfigError
from t1.model import lora
from t1.model.forward import Forward
from t1.model.load import load, load_for_training
from t1.rollout.base import SamplingParams
from t1.rollout.fast import FastEngine
from t1.rollout.weights import full_parameters

CFG = lora.LoraConfig(rank=4, alpha=8.0)


def adapted(model_dir, seed=0):
    """The tiny model with LoRA adapters whose B is random (PEFT starts B at zero: no change yet)."""
    torch.manual_seed(seed)  # PEFT draws A at random
    model, tok = load_for_training(str(model_dir), CFG, None)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    return model, tok


def batch(tok):
    ids = [tok(t)["input_ids"] for t in ("use 3 5 7 to make 22 :", "use 1 2 to make 3 :")]
    T = max(map(len, ids))
    pad = torch.tensor([i + [tok.pad_token_id] * (T - len(i)) for i in ids])
    attn = torch.tensor([[1] * len(i) + [0] * (T - len(i)) for i in ids])
    return pad, attn


def test_only_the_adapter_trains_and_the_base_is_recorded(tiny_model_dir):
    model, _ = adapted(tiny_model_dir)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all(".lora_A." in n or ".lora_B." in n for n in trainable)
    # all-linear: every projection of every layer, never the output layer
    assert sum(".lora_A." in n for n in trainable) == 2 * 7 and not any("lm_head" in n for n in trainable)
    assert model.peft_config["default"].base_model_name_or_path == str(tiny_model_dir.resolve())
    assert "LoRA r=4" in lora.describe(model)


def test_fast_forward_equals_peft_forward_values_and_gradients(tiny_model_dir):
    model, tok = adapted(tiny_model_dir)
    ids, attn = batch(tok)
    fast, plain = Forward(model, model, fast=True), Forward(model, model, fast=False)
    assert fast.fast and not plain.fast
    grads = []
    for f in (fast, plain):
        model.zero_grad()
        logits = f(ids, attn)
        (logits[attn.bool()].float().logsumexp(-1).sum()).backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad})
        grads[-1]["logits"] = logits.detach()
    a, b = grads
    m = attn.bool()
    assert torch.allclose(a["logits"][m], b["logits"][m], atol=1e-4)
    for name in a:
        if name != "logits":
            assert torch.allclose(a[name], b[name], atol=1e-4, rtol=1e-3), name
    base = [p for n, p in model.named_parameters() if not p.requires_grad]
    assert all(p.grad is None for p in base)


def test_dropout_uses_peft_forward(tiny_model_dir):
    model, _ = load_for_training(str(tiny_model_dir), lora.LoraConfig(rank=4, dropout=0.1), None)
    assert not Forward(model, model, fast=True).fast


def test_merged_weights_equal_base_plus_adapter(tiny_model_dir, tmp_path):
    model, tok = adapted(tiny_model_dir)
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir).state_dict()
    merged = {n: t.clone() for n, t in lora.merged_state(model)}
    assert set(merged) == set(base)
    q = "model.layers.0.self_attn.q_proj"
    layer = model.get_base_model().model.layers[0].self_attn.q_proj
    B, A = layer.lora_B["default"].weight, layer.lora_A["default"].weight
    assert torch.allclose(merged[f"{q}.weight"], base[f"{q}.weight"] + (8.0 / 4) * B @ A, atol=1e-6)
    assert torch.equal(merged["model.embed_tokens.weight"], base["model.embed_tokens.weight"])
    # PEFT's own merge agrees, and so does what a vLLM engine is pushed
    peft_merged = adapted(tiny_model_dir)[0].merge_and_unload().state_dict()
    assert all(torch.allclose(merged[n], peft_merged[n], atol=1e-6) for n in merged)
    pushed = {n: t.clone() for n, t in full_parameters(model)}
    assert all(torch.equal(pushed[n], merged[n]) for n in merged)
    # saved merged: a plain HF model with the same logits as base + adapter
    lora.save_merged(model, tok, tmp_path / "merged")
    plain = AutoModelForCausalLM.from_pretrained(tmp_path / "merged")
    ids, attn = batch(tok)
    with torch.no_grad():
        want = model(input_ids=ids, attention_mask=attn).logits
        assert torch.allclose(plain(ids, attention_mask=attn).logits, want, atol=1e-4)


def test_an_adapter_directory_loads_as_base_plus_adapter(tiny_model_dir, tmp_path):
    model, tok = adapted(tiny_model_dir)
    model.save_pretrained(tmp_path / "adapter")
    tok.save_pretrained(tmp_path / "adapter")
    assert json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())["base_model_name_or_path"] \
        == str(tiny_model_dir.resolve())
    assert lora.base_path(tmp_path / "adapter") == str(tiny_model_dir.resolve())
    loaded, _ = load(tmp_path / "adapter", dtype="float32")
    assert not lora.is_lora(loaded)
    ids, attn = batch(tok)
    with torch.no_grad():
        want = model(input_ids=ids, attention_mask=attn).logits
        assert torch.allclose(loaded(ids, attention_mask=attn).logits, want, atol=1e-4)
    # resuming: the same adapter, trainable again
    again, _ = load_for_training(str(tiny_model_dir), CFG, tmp_path / "adapter")
    assert lora.is_lora(again) and any(p.requires_grad for p in again.parameters())
    a = dict(model.named_parameters())
    assert all(torch.equal(p, a[n]) for n, p in again.named_parameters())


def test_the_fast_sampler_draws_from_the_merged_weights(tiny_model_dir, tmp_path):
    model, tok = adapted(tiny_model_dir)
    lora.save_merged(model, tok, tmp_path / "merged")
    plain, _ = load(tmp_path / "merged", dtype="float32")
    params = SamplingParams(temperature=1.0, top_p=1.0, max_new_tokens=12)
    prompts = [tok("use 3 5 7 to make 22 :")["input_ids"]] * 4
    a = FastEngine(model, tok, dtype="float32").generate(prompts, [1, 2, 3, 4], params)
    b = FastEngine(plain, tok, dtype="float32").generate(prompts, [1, 2, 3, 4], params)
    assert [s.token_ids for s in a] == [s.token_ids for s in b]
    base, _ = load(tiny_model_dir, dtype="float32")
    c = FastEngine(base, tok, dtype="float32").generate(prompts, [1, 2, 3, 4], params)
    assert [s.token_ids for s in a] != [s.token_ids for s in c]  # the adapter changes what is sampled


def test_bad_lora_settings_are_one_line(tiny_model_dir):
    with pytest.raises(ConfigError, match="lora.target_modules"):
        load_for_training(str(tiny_model_dir), lora.LoraConfig(rank=4, target_modules=("nonexistent",)), None)


def test_an_adapter_on_a_tied_output_layer_is_refused(tiny_model_dir):
    with pytest.raises(ConfigError, match="tied"):
        load_for_training(str(tiny_model_dir), lora.LoraConfig(rank=4, target_modules=("q_proj", "lm_head")), None)


def test_an_adapter_on_an_untied_output_layer_merges(untied_model_dir):
    torch.manual_seed(0)
    model, _ = load_for_training(str(untied_model_dir), lora.LoraConfig(rank=4, target_modules=("lm_head",)),
                                 None)
    with torch.no_grad():
        model.get_base_model().lm_head.lora_B["default"].weight.normal_()
    merged = dict(lora.merged_state(model))
    assert not torch.equal(merged["lm_head.weight"], model.get_base_model().lm_head.base_layer.weight)
    ids = torch.tensor([[3, 4, 5, 6]])
    with torch.no_grad():
        assert torch.allclose(Forward(model, model, fast=True)(ids, torch.ones_like(ids)),
                              model(input_ids=ids).logits, atol=1e-4)


def test_vllm_is_given_the_merged_copy_of_a_lora_run(tiny_model_dir, tmp_path, monkeypatch):
    """engine=vllm loads plain models: a LoRA final/ is refused in one line unless final/merged exists, which
    is then what vLLM loads."""
    import t1.rollout as rollout

    model, tok = adapted(tiny_model_dir)
    final = tmp_path / "final"
    model.save_pretrained(final)
    tok.save_pretrained(final)
    with pytest.raises(ConfigError, match="LoRA adapter and engine vllm loads plain models"):
        rollout.open_engine("vllm", final)
    lora.save_merged(model, tok, final / "merged")
    seen = {}
    monkeypatch.setattr(rollout, "make_engine",
                        lambda cfg, m, t, model_path, **kw: seen.setdefault("p", model_path))
    rollout.open_engine("vllm", final)
    assert seen["p"] == str(final / "merged")
