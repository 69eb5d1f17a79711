"""The sampler's C decode-attention kernel for fp32 caches (t1/model/kernels/decode_attention.c, built by
t1/model/kernels/build.py; the bf16 block kernel is tested in test_kernel_ops.py): equal to softmax attention,
and so is the op's PyTorch fallback, for grouped-query heads, head sizes with and without a specialised loop,
strided cache slices and padding masks; a clear error on bad slices; a clean fallback when the kernels cannot
be built."""

import logging

import pytest
import torch

from t1.model.kernels import build as kernel
from t1.model.kernels import ops
from t1.model.load import ModelConfig, build_model, build_tokenizer
from t1.rollout.base import SamplingParams
from t1.rollout.fast import FastEngine

needs_cc = pytest.mark.skipif(kernel._compiler() is None, reason="no C compiler on this machine")


def reference(q, k, v, bias):
    """q [B, Hq, D]; k, v [B, Hkv, T, D]; bias [B, T] or None -> [B, Hq * D], all in fp64."""
    B, Hq, D = q.shape
    g = Hq // k.shape[1]
    k, v = k.double().repeat_interleave(g, dim=1), v.double().repeat_interleave(g, dim=1)
    scores = torch.einsum("bhd,bhtd->bht", q.double(), k)
    if bias is not None:
        scores = scores + bias.double()[:, None]
    return torch.einsum("bht,bhtd->bhd", scores.softmax(-1), v).reshape(B, Hq * D)


@pytest.mark.parametrize("D,Hq,Hkv", [(64, 4, 4), (128, 4, 2), (48, 6, 3)])
@pytest.mark.parametrize("masked", [False, True])
@pytest.mark.parametrize("path", ["kernel", "fallback"])
def test_kernel_matches_softmax_attention(monkeypatch, D, Hq, Hkv, masked, path):
    if path == "kernel":
        if kernel._compiler() is None:
            pytest.skip("no C compiler on this machine")
        assert ops.available()
    else:
        monkeypatch.setattr(ops, "_lib", lambda: None)
    gen = torch.Generator().manual_seed(D + Hq)
    B, slots, T = 5, 40, 29
    # slices of a bigger cache, as the sampler passes them: 7 rows allocated, 40 slots, 29 in use
    cache_k = torch.randn(7, Hkv, slots, D, generator=gen)
    cache_v = torch.randn(7, Hkv, slots, D, generator=gen)
    k, v = cache_k[:B, :, :T], cache_v[:B, :, :T]
    q = torch.randn(B, Hq, D, generator=gen) * D ** -0.5
    bias = None
    if masked:  # left padding of 0..4 slots per row
        bias = torch.zeros(B, slots)
        for row in range(B):
            bias[row, :row] = float("-inf")
    out = ops.decode_attention(q, k, v, bias)
    assert out.shape == (B, Hq * D) and out.dtype == torch.float32
    torch.testing.assert_close(out.double(), reference(q, k, v, None if bias is None else bias[:, :T]),
                               atol=2e-5, rtol=1e-5)


def test_kernel_rejects_mismatched_cache_slices():
    q = torch.randn(2, 4, 64)
    k = torch.randn(2, 4, 10, 64)
    with pytest.raises(ValueError, match="bad cache slices"):
        ops.decode_attention(q, k, torch.randn(2, 4, 10, 64).bfloat16(), None)  # a bf16 cache
    with pytest.raises(ValueError, match="bad cache slices"):
        ops.decode_attention(q, k.transpose(-1, -2), k.transpose(-1, -2), None)  # head dim not contiguous
    with pytest.raises(ValueError, match="bad cache slices"):
        ops.decode_attention(torch.randn(2, 3, 64), k, k, None)  # 3 query heads over 4 kv heads


def test_load_falls_back_without_a_working_compiler(monkeypatch, tmp_path, caplog):
    monkeypatch.setenv("T1_CACHE_DIR", str(tmp_path))
    kernel.load.cache_clear()
    try:
        monkeypatch.setenv("T1_KERNELS", "0")
        assert kernel.load() is None
        kernel.load.cache_clear()
        monkeypatch.delenv("T1_KERNELS")
        monkeypatch.setenv("CC", "false")  # a "compiler" that fails every build
        with caplog.at_level(logging.WARNING, logger="t1.model.kernels.build"):
            assert kernel.load() is None
        assert "could not build t1's C kernels" in caplog.text
        assert not list(tmp_path.rglob("*.so")) and not list(tmp_path.rglob("*.tmp"))  # nothing half-written
    finally:
        kernel.load.cache_clear()


@needs_cc
def test_kernel_builds_into_the_cache_dir_once(monkeypatch, tmp_path):
    monkeypatch.setenv("T1_CACHE_DIR", str(tmp_path))
    kernel.load.cache_clear()
    try:
        assert kernel.load() is not None
        built = list((tmp_path / "kernels").glob("t1_kernels-*.so"))
        assert len(built) == 1
        stamp = built[0].stat().st_mtime_ns
        kernel.load.cache_clear()
        assert kernel.load() is not None  # a second process reuses the build
        assert built[0].stat().st_mtime_ns == stamp
    finally:
        kernel.load.cache_clear()


@needs_cc
def test_sampler_with_kernel_equals_sampler_without(monkeypatch):
    """fp32 weights: the kernel changes only summation order, so samples and log-probs agree with the
    batched-matmul path (prompts of different lengths, so the padding mask is exercised)."""
    tok = build_tokenizer(100)
    torch.manual_seed(0)
    model = build_model(ModelConfig(hidden=64, layers=2, heads=4, kv_heads=2, ffn=128), tok).eval()
    prompts = [tok(p)["input_ids"] for p in ("use 1 2 3 to make 6 :", "use 10 20 to make 30 :", "9 :")] * 3
    params = SamplingParams(temperature=1.0, top_p=0.95, max_new_tokens=24)
    calls = []
    real = ops.decode_attention
    monkeypatch.setattr(ops, "decode_attention", lambda *args: calls.append(1) or real(*args))
    a = FastEngine(model, tok, dtype="float32").generate(prompts, list(range(9)), params)
    n_with = len(calls)
    b = FastEngine(model, tok, dtype="float32", kernel=False).generate(prompts, list(range(9)), params)
    assert n_with > 0 and len(calls) == n_with  # the kernel ran in the first engine only
    for x, y in zip(a, b):
        assert x.token_ids == y.token_ids
        torch.testing.assert_close(torch.tensor(x.logprobs), torch.tensor(y.logprobs), atol=1e-4, rtol=0)
