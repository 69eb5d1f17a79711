import pytest
import torch

from t1.model.load import ModelConfig, build_model, build_tokenizer
from t1.rollout import make_engine
from t1.rollout.base import SamplingParams
from t1.rollout.fast import FastEngine, sample_tokens, uniform
from t1.rollout.hf_generate import GenerateEngine


def _model(kv_heads=2, seed=0):
    tok = build_tokenizer(100)
    cfg = ModelConfig(hidden=64, layers=2, heads=4, kv_heads=kv_heads, ffn=128, seed=seed)
    model = build_model(cfg, tok).eval()
    with torch.no_grad():  # a peaked, non-uniform distribution so that samples differ and EOS occurs
        for p in model.parameters():
            p.mul_(4.0)
    return model, tok


def _hf_logprobs(model, prompt, sample):
    full = torch.tensor([prompt + sample.token_ids])
    lp = torch.log_softmax(model(full).logits[0].float(), -1)[len(prompt) - 1: -1]
    return lp.gather(-1, torch.tensor(sample.token_ids)[:, None]).squeeze(-1)


def test_fast_engine_matches_transformers_logits_fp32():
    model, tok = _model(kv_heads=2)
    engine = FastEngine(model, tok, dtype="float32")
    prompts = [tok("use 3 5 7 to make 22 :")["input_ids"], tok("use 9 to make 9 :")["input_ids"]]  # padded
    greedy = engine.generate(prompts, [0, 1], SamplingParams(temperature=0, max_new_tokens=12))
    for p, s in zip(prompts, greedy):
        logits = model(torch.tensor([p + s.token_ids])).logits[0]
        assert logits[len(p) - 1: -1].argmax(-1).tolist()[: len(s.token_ids)] == s.token_ids
    sampled = engine.generate(prompts, [5, 6], SamplingParams(temperature=1.0, max_new_tokens=30))
    for p, s in zip(prompts, sampled):
        torch.testing.assert_close(torch.tensor(s.logprobs), _hf_logprobs(model, p, s), atol=5e-5, rtol=1e-5)
        assert s.finished == (s.token_ids[-1] == tok.eos_token_id)
        assert len(s.token_ids) <= 30


def test_fast_engine_log_probs_are_the_processed_ones_the_trainer_compares_with():
    """Temperature and top-p: the fast engine's log-probs = t1.rollout.logprobs.processed_logp of transformers'
    logits (the trainer's side of sampling/logp_diff_*): one nucleus rule in both places."""
    from t1.rollout.logprobs import processed_logp

    model, tok = _model(kv_heads=2)
    engine = FastEngine(model, tok, dtype="float32")
    prompts = [tok("use 3 5 7 to make 22 :")["input_ids"], tok("use 9 to make 9 :")["input_ids"]] * 2
    for s, p in zip(engine.generate(prompts, [1, 2, 3, 4], SamplingParams(1.3, 0.8, 30)), prompts):
        with torch.no_grad():
            logits = model(torch.tensor([p + s.token_ids])).logits[0, len(p) - 1: -1]
        ref = processed_logp(logits, torch.tensor(s.token_ids), 1.3, 0.8)
        torch.testing.assert_close(torch.tensor(s.logprobs), ref, atol=5e-5, rtol=1e-5)


def test_samples_depend_only_on_prompt_and_seed():
    model, tok = _model()
    engine = FastEngine(model, tok, dtype="float32", max_batch=3)
    p = [tok("use 1 2 3 to make 6 :")["input_ids"], tok("use 4 to make 4 :")["input_ids"]]
    params = SamplingParams(temperature=1.2, top_p=0.95, max_new_tokens=40)
    big = engine.generate(p * 4, list(range(8)), params)
    alone = engine.generate([p[1]], [5], params)
    assert big[5].token_ids == alone[0].token_ids
    assert len({tuple(s.token_ids) for s in big}) > 2  # different seeds, different samples
    assert engine.generate(p * 4, list(range(8)), params)[3].token_ids == big[3].token_ids


def test_sampling_distribution_and_top_p():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]])).repeat(20000, 1)
    u = uniform(torch.arange(20000), 0)
    tokens, logp = sample_tokens(logits, u, temperature=1.0, top_p=1.0)
    freq = torch.bincount(tokens, minlength=4).float() / 20000
    torch.testing.assert_close(freq, torch.tensor([0.5, 0.3, 0.15, 0.05]), atol=0.015, rtol=0)
    tokens, logp = sample_tokens(logits, u, temperature=1.0, top_p=0.7)  # nucleus {0, 1}
    assert set(tokens.tolist()) == {0, 1}
    torch.testing.assert_close(logp[tokens == 0][0], torch.log(torch.tensor(0.5 / 0.8)))


def test_bf16_engine_and_generate_engine_run():
    model, tok = _model()
    p = [tok("use 1 2 3 to make 6 :")["input_ids"]] * 3
    for engine in (FastEngine(model, tok, dtype="bfloat16"), GenerateEngine(model, tok),
                   make_engine("fast", model, tok)):
        out = engine.generate(p, [1, 2, 3], SamplingParams(1.0, 1.0, 16))
        assert len(out) == 3 and all(0 < len(s.token_ids) <= 16 for s in out)
        assert all(isinstance(s.text, str) and s.finished == (s.token_ids[-1] == tok.eos_token_id) for s in out)


def test_fused_weights_are_rebuilt_after_an_optimizer_step_only():
    model, tok = _model()
    engine = FastEngine(model, tok, dtype="float32")
    first = engine.weights()
    assert engine.weights() is first  # nothing changed: no re-fusing
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    model(torch.tensor([[1, 2, 3]])).logits.sum().backward()
    opt.step()
    second = engine.weights()
    assert second is not first
    layer = model.model.layers[0]  # gate/up fused, the norm before them folded in: the updated values
    gate_up = torch.cat([layer.mlp.gate_proj.weight, layer.mlp.up_proj.weight])
    fused = gate_up * layer.post_attention_layernorm.weight
    torch.testing.assert_close(second.layers[0]["gu"].w, fused)
    with torch.no_grad():
        model.lm_head.weight.copy_(torch.zeros_like(model.lm_head.weight))  # e.g. loading a checkpoint
    assert engine.weights() is not second


@pytest.mark.slow
def test_every_sample_is_the_same_in_a_batch_as_alone():
    """Rows finish at different steps, so the batch is compacted several times (live rows move into the
    holes); every sample must still equal the one its prompt and seed give alone, and run to its own end."""
    model, tok = _model()
    engine = FastEngine(model, tok, dtype="float32", compact_at=0.1)
    texts = ["use 1 2 3 to make 6 :", "use 4 to make 4 :", "use 9 8 to make 72 :", "use 5 5 to make 1 :"]
    prompts = [tok(t)["input_ids"] for t in texts] * 4
    params = SamplingParams(temperature=1.0, top_p=1.0, max_new_tokens=48)
    big = engine.generate(prompts, list(range(16)), params)
    assert len({len(s.token_ids) for s in big}) > 3  # rows really end at different steps
    for i, (p, s) in enumerate(zip(prompts, big)):
        alone = engine.generate([p], [i], params)[0]
        assert s.token_ids == alone.token_ids and s.finished == alone.finished, i
