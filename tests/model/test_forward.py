"""t1's own training forward computes the same function as transformers' — logits and gradients."""

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

from t1.model.forward import Forward, Packed, Prepared, forward_logits, packed_logits, supports
from t1.model.load import ModelConfig, build_model, build_tokenizer


def _uneven_norms(model):
    """RMSNorm weights away from their initial ones (t1 folds them into the next matrix)."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.uniform_(0.5, 1.5)
    return model


def _qwen2_with_biases():
    cfg = Qwen2Config(vocab_size=50, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                      tie_word_embeddings=False)
    torch.manual_seed(1)
    return Qwen2ForCausalLM(cfg).eval()


def _llama_mlp_bias():
    cfg = LlamaConfig(vocab_size=50, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=64,
                      attention_bias=True, mlp_bias=True, rope_theta=500.0)
    torch.manual_seed(2)
    model = LlamaForCausalLM(cfg).eval()
    with torch.no_grad():  # non-zero biases, so that a dropped bias would show
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                p.normal_(0, 0.5)
    return model


@pytest.mark.parametrize("make", [
    lambda: build_model(ModelConfig(hidden=64, layers=2, heads=4, kv_heads=2, ffn=128), build_tokenizer(100)),
    _qwen2_with_biases, _llama_mlp_bias])
def test_logits_and_gradients_match_transformers(make):
    model = _uneven_norms(make())
    assert supports(model)
    model.set_attn_implementation("eager")
    torch.manual_seed(0)
    ids = torch.randint(3, 50, (3, 17))
    ids[1, 4] = model.config.pad_token_id or 0  # a sampled pad token: its embedding row gets no gradient
    attn = torch.ones_like(ids)
    attn[0, 9:] = 0  # right padding, as the trainers collate
    attn[2, 14:] = 0
    real = attn.bool()
    ref = model(input_ids=ids, attention_mask=attn).logits
    got = forward_logits(model, ids, attn)
    torch.testing.assert_close(got[real], ref[real], atol=2e-5, rtol=1e-5)
    # gradients of a loss over real positions, for every parameter
    grads = []
    for fn in (lambda: model(input_ids=ids, attention_mask=attn).logits, lambda: forward_logits(model, ids, attn)):
        model.zero_grad()
        torch.log_softmax(fn()[real], -1)[:, 5].sum().backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys() and len(grads[0]) == len(list(model.parameters()))
    for n in grads[0]:
        torch.testing.assert_close(grads[1][n], grads[0][n], atol=2e-5, rtol=1e-4, msg=n)


def test_forward_falls_back_for_wrapped_or_unsupported_models():
    model = build_model(ModelConfig(hidden=32, layers=1, heads=2, kv_heads=2, ffn=64), build_tokenizer(20))
    ids = torch.randint(3, 20, (2, 6))
    attn = torch.ones_like(ids)
    wrapper = torch.nn.Module()  # stands for a DDP wrapper: not the raw model, so its own forward is used
    calls = []
    wrapper.forward = lambda **kw: calls.append(kw) or model(**kw)
    forward = Forward(wrapper, model)
    forward(ids, attn)
    assert len(calls) == 1 and forward.prepare() is None
    model.config.attention_dropout = 0.1  # a training-time op t1's pass does not implement
    assert not supports(model)


class _Ids:
    """The least a sampler needs from a tokenizer."""

    eos_token_id, pad_token_id = 1, 0

    def decode(self, ids, skip_special_tokens=True):
        return " ".join(map(str, ids))


@pytest.mark.parametrize("make", [_qwen2_with_biases, _llama_mlp_bias])
@pytest.mark.parametrize("dtype,atol", [("float32", 5e-5), ("bfloat16", 0.01)])
def test_fast_sampler_shares_the_rearrangement_biases_included(make, dtype, atol):
    """The sampler builds on the same rearranged weights; its log-probs equal transformers' for models with
    q/k/v biases (Qwen2) and with o_proj and MLP biases (Llama attention_bias / mlp_bias). In bf16 (on CPUs:
    oneDNN-blocked weights, the C decode-attention and SwiGLU kernels) to bf16 rounding."""
    from t1.rollout.base import SamplingParams
    from t1.rollout.fast import FastEngine

    model = make()
    prompt = [5, 6, 7, 8]
    samples = FastEngine(model, _Ids(), dtype=dtype).generate([prompt, prompt[:2]], [3, 4],
                                                                  SamplingParams(1.0, 1.0, 12))
    for p, s in zip([prompt, prompt[:2]], samples):
        lp = torch.log_softmax(model(torch.tensor([p + s.token_ids])).logits[0].float(), -1)[len(p) - 1: -1]
        ref = lp.gather(-1, torch.tensor(s.token_ids)[:, None]).squeeze(-1)
        torch.testing.assert_close(torch.tensor(s.logprobs), ref, atol=atol, rtol=1e-5)


@pytest.mark.parametrize("make", [
    lambda: build_model(ModelConfig(hidden=64, layers=2, heads=4, kv_heads=2, ffn=128), build_tokenizer(100)),
    _qwen2_with_biases])
@pytest.mark.parametrize("ratio", [0.0, 0.7, 1.0])  # one attention group, a few, one per distinct length
def test_packed_logits_and_gradients_match_transformers(make, ratio):
    """Sequences of different lengths laid end to end (no padding): the logits at every real position, and
    every parameter's gradient, equal transformers' on the right-padded batch."""
    model = _uneven_norms(make())
    model.set_attn_implementation("eager")
    gen = torch.Generator().manual_seed(0)
    lengths = [9, 17, 3, 14, 17, 1, 12]
    seqs = [torch.randint(3, 50, (n,), generator=gen).tolist() for n in lengths]
    seqs[1][5] = model.config.pad_token_id or 0  # a sampled pad token: its embedding row gets no gradient
    ids = torch.zeros(len(seqs), max(lengths), dtype=torch.long)
    attn = torch.zeros_like(ids)
    for r, s in enumerate(seqs):
        ids[r, : len(s)] = torch.tensor(s)
        attn[r, : len(s)] = 1
    real = attn.bool()
    packed = Packed(seqs, "cpu", ratio=ratio)
    assert len(packed.groups) == {0.0: 1, 0.7: 4, 1.0: 6}[ratio]
    flat = torch.tensor([f for idx in packed.index for f in idx])
    select = flat[::3]  # logits at chosen positions only, as the RL trainer asks for response positions

    def ref():
        return model(input_ids=ids, attention_mask=attn).logits[real][::3]

    def got():
        return packed_logits(Prepared(model), packed, select)

    torch.testing.assert_close(got(), ref(), atol=2e-5, rtol=1e-5)
    torch.testing.assert_close(packed_logits(Prepared(model), packed)[flat],
                               model(input_ids=ids, attention_mask=attn).logits[real], atol=2e-5, rtol=1e-5)
    grads = []
    for fn in (ref, got):
        model.zero_grad()
        torch.log_softmax(fn(), -1)[:, 5].sum().backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys() and len(grads[0]) == len(list(model.parameters()))
    for n in grads[0]:
        torch.testing.assert_close(grads[1][n], grads[0][n], atol=2e-5, rtol=1e-4, msg=n)


def test_packed_rejects_empty_input():
    with pytest.raises(ValueError, match="no empty"):
        Packed([[1, 2], []], "cpu")


def test_packed_shared_prefixes_compute_the_same_function():
    """K samples of two prompts: each prompt's tokens are laid out once (fewer flat tokens), and the logits
    at every position of every sequence, and every gradient, equal transformers' on the padded batch."""
    model = _uneven_norms(_qwen2_with_biases())
    model.set_attn_implementation("eager")
    gen = torch.Generator().manual_seed(3)
    prompts = [torch.randint(3, 50, (n,), generator=gen).tolist() for n in (6, 4)]
    seqs, prefixes = [], []
    for k, n_resp in enumerate([5, 1, 9, 3, 7, 2]):  # samples alternate between the prompts
        p = prompts[k % 2]
        seqs.append(p + torch.randint(3, 50, (n_resp,), generator=gen).tolist())
        prefixes.append(len(p))
    packed = Packed(seqs, "cpu", prefixes=prefixes)
    assert packed.n == sum(len(s) for s in seqs) - 2 * 6 - 2 * 4  # each prompt once instead of three times
    assert packed.flat(0, 2) == packed.flat(2, 2) == packed.flat(4, 2) != packed.flat(1, 2)
    ids = torch.zeros(len(seqs), max(map(len, seqs)), dtype=torch.long)
    attn = torch.zeros_like(ids)
    for r, s in enumerate(seqs):
        ids[r, : len(s)] = torch.tensor(s)
        attn[r, : len(s)] = 1
    real = attn.bool()
    flat = torch.tensor([f for idx in packed.index for f in idx])  # every token of every sequence, in order

    def ref():
        return model(input_ids=ids, attention_mask=attn).logits[real]

    def got():
        return packed_logits(Prepared(model), packed, flat)

    torch.testing.assert_close(got(), ref(), atol=2e-5, rtol=1e-5)
    grads = []
    for fn in (ref, got):
        model.zero_grad()
        torch.log_softmax(fn(), -1)[:, 7].sum().backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters()})
    for n in grads[0]:
        torch.testing.assert_close(grads[1][n], grads[0][n], atol=2e-5, rtol=1e-4, msg=n)
