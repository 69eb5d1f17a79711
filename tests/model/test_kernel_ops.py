"""The fused bf16 SwiGLU, RoPE and RMSNorm kernels (t1/model/kernels/elementwise.c via t1/model/kernels/ops.py)
and the sampler's fused decode block (decode_attention.c): forward and gradient against fp64 references,
strided inputs, NaN propagation, the PyTorch fallback, and t1's training forward with the kernels against the
same forward without them."""

import pytest
import torch
import torch.nn.functional as F

from t1.model.forward import Packed, Prepared, packed_logits
from t1.model.kernels import build, ops
from t1.model.load import ModelConfig, build_model, build_tokenizer

needs_cc = pytest.mark.skipif(build._compiler() is None, reason="no C compiler on this machine")
BF16_ULP = 2.0 ** -8  # relative spacing of bf16 numbers: one rounding costs at most half of it


class _Counting:
    """The kernel library, counting calls per function (to prove the kernel path ran)."""

    def __init__(self, lib):
        self.lib, self.calls = lib, {}

    def __getattr__(self, name):
        fn = getattr(self.lib, name)

        def call(*args):
            self.calls[name] = self.calls.get(name, 0) + 1
            return fn(*args)
        return call


@pytest.fixture
def counting(monkeypatch):
    lib = build.load()
    assert lib is not None
    wrapper = _Counting(lib)
    monkeypatch.setattr(ops, "_lib", lambda: wrapper)
    return wrapper


def _close(got, want, rel):
    """|got - want| <= rel · |want| + a floor for values near zero (relative to the largest)."""
    err = (got.double() - want).abs()
    bound = rel * want.abs() + rel * 1e-2 * want.abs().max()
    assert bool((err <= bound).all()), f"max excess {(err - bound).max().item():.3g}"


@needs_cc
@pytest.mark.parametrize("shape", [(3, 7, 80), (300, 2048)])  # f = 40 leaves a tail for the vector loop
def test_swiglu_forward_and_gradient_match_fp64(counting, shape):
    gen = torch.Generator().manual_seed(shape[-1])
    gu = (torch.randn(shape, generator=gen) * 4).bfloat16().requires_grad_()
    dout = torch.randn(shape[:-1] + (shape[-1] // 2,), generator=gen).bfloat16()
    out = ops.swiglu(gu)
    (grad,) = torch.autograd.grad(out, gu, dout)
    assert counting.calls == {"t1_swiglu_fwd": 1, "t1_swiglu_bwd": 1}
    assert out.dtype == grad.dtype == torch.bfloat16 and grad.shape == gu.shape

    ref = gu.detach().double().requires_grad_()
    g, u = ref.chunk(2, dim=-1)
    want = g * torch.sigmoid(g) * u
    (want_grad,) = torch.autograd.grad(want, ref, dout.double())
    _close(out, want.detach(), BF16_ULP)  # one rounding: within one bf16 step of the exact value
    _close(grad, want_grad, BF16_ULP)
    # PyTorch's bf16 ops round after every op; the kernel is at least as close to the exact values
    g, u = gu.detach().chunk(2, dim=-1)
    torch_err = ((F.silu(g) * u).double() - want.detach()).abs().sum()
    assert (out.double() - want.detach()).abs().sum() <= torch_err


@needs_cc
def test_swiglu_passes_nan_and_survives_extremes(counting):
    gu = torch.tensor([[float("nan"), 1e30, -1e30, 0.0, 2.0, 2.0, 2.0, 2.0]]).bfloat16()
    out = ops.swiglu(gu)
    assert torch.isnan(out[0, 0])  # a NaN activation stays NaN, so the trainer's non-finite check sees it
    torch.testing.assert_close(out[0, 1:].float(), F.silu(gu[0, 1:4].float()).mul(2), atol=1e-6, rtol=BF16_ULP)


@needs_cc
@pytest.mark.parametrize("lead", [(37,), (3, 11)])
def test_rope_forward_and_gradient_match_fp64_on_a_strided_slice(counting, lead):
    gen = torch.Generator().manual_seed(len(lead))
    H, hd = 6, 16
    qkv = torch.randn(*lead, (H + 2) * hd, generator=gen).bfloat16().requires_grad_()
    x = qkv.split([H * hd, 2 * hd], dim=-1)[0].unflatten(-1, (H, hd))  # heads of a fused projection
    angles = torch.rand(lead[-1], hd // 2, generator=gen) * 6
    rot = torch.polar(torch.ones_like(angles), angles)[:, None]  # [T, 1, hd/2]: broadcast over leading dims
    dy = torch.randn(*lead, H, hd, generator=gen).bfloat16()
    y = ops.rope(x, rot, torch.bfloat16)
    (grad,) = torch.autograd.grad(y, qkv, dy)
    assert counting.calls == {"t1_rope": 2}

    ref = qkv.detach().double().requires_grad_()
    z = torch.view_as_complex(ref[..., : H * hd].unflatten(-1, (H, hd // 2, 2)).contiguous())
    want = torch.view_as_real(z * rot.to(torch.complex128)).flatten(-2)
    (want_grad,) = torch.autograd.grad(want, ref, dy.double())
    _close(y, want.detach(), BF16_ULP)
    _close(grad, want_grad, BF16_ULP)
    assert not grad[..., H * hd:].any()  # the part of the projection not rotated gets no gradient


@needs_cc
def test_rms_norm_forward_and_backward_match_fp64(counting):
    gen = torch.Generator().manual_seed(3)
    x = (torch.randn(2, 19, 40, generator=gen) * torch.rand(2, 19, 1, generator=gen) * 5).requires_grad_()
    dy = torch.randn(2, 19, 40, generator=gen).bfloat16()
    y = ops.rms_norm_to(x, 1e-5, torch.bfloat16)
    (grad,) = torch.autograd.grad(y, x, dy)
    assert counting.calls == {"t1_rms_norm_fwd_f32": 1, "t1_rms_norm_bwd": 1}
    assert y.dtype == torch.bfloat16 and grad.dtype == torch.float32
    ref = x.detach().double().requires_grad_()
    want = ref * torch.rsqrt(ref.pow(2).mean(-1, keepdim=True) + 1e-5)
    (want_grad,) = torch.autograd.grad(want, ref, dy.double())
    _close(y, want.detach(), BF16_ULP)
    torch.testing.assert_close(grad.double(), want_grad, atol=1e-5, rtol=1e-4)  # fp32 math on bf16 dy: exact-ish
    with torch.no_grad():  # nothing to differentiate: the forward kernel alone
        assert torch.equal(ops.rms_norm_to(x, 1e-5, torch.bfloat16), y)
    assert counting.calls == {"t1_rms_norm_fwd_f32": 2, "t1_rms_norm_bwd": 1}


@needs_cc
def test_rms_norm_forward_of_bf16_rows_with_a_stride(counting):
    gen = torch.Generator().manual_seed(4)
    wide = (torch.randn(23, 100, generator=gen) * 3).bfloat16()
    x = wide[:, 10:74]  # rows 100 apart: the sampler normalises the last position of [B, S, H] like this
    y = ops.rms_norm_to(x, 1e-6, torch.bfloat16)
    assert counting.calls == {"t1_rms_norm_fwd_bf16": 1} and y.is_contiguous()
    ref = x.double()
    _close(y, ref * torch.rsqrt(ref.pow(2).mean(-1, keepdim=True) + 1e-6), BF16_ULP)
    # a bf16 input that needs a gradient takes PyTorch's ops (the backward kernel reads fp32)
    xg = x.clone().requires_grad_()
    assert torch.equal(ops.rms_norm_to(xg, 1e-6, torch.bfloat16), F.rms_norm(xg, (64,), None, 1e-6))
    assert counting.calls == {"t1_rms_norm_fwd_bf16": 1}


def _decode_block_reference(qkv, rot, k, v, t0, bias, Hq):
    """The decode block in fp64 by plain ops; returns (output, k row written, v row written)."""
    _, Hkv, _, D = k.shape
    q, kn, vn = qkv.double().split([Hq * D, Hkv * D, Hkv * D], dim=-1)
    r = rot.to(torch.complex128)[:, None]

    def rotate(x, H):
        z = torch.view_as_complex(x.unflatten(-1, (H, D // 2, 2)).contiguous())
        return torch.view_as_real(z * r).flatten(-2)

    q, kn = rotate(q, Hq), rotate(kn, Hkv)
    keys = torch.cat([k[:, :, :t0].double(), kn.bfloat16().double()[:, :, None]], dim=2)  # cache holds bf16
    vals = torch.cat([v[:, :, :t0].double(), vn.unflatten(-1, (Hkv, D))[:, :, None]], dim=2)
    g = Hq // Hkv
    keys, vals = keys.repeat_interleave(g, dim=1), vals.repeat_interleave(g, dim=1)  # [B, Hq, t0 + 1, D]
    scores = torch.einsum("bhd,bhtd->bht", q, keys)
    if bias is not None:
        scores = scores + bias[:, None, : t0 + 1].double()
    out = torch.einsum("bht,bhtd->bhd", torch.softmax(scores, -1), vals).flatten(1)
    return out, kn, vn.unflatten(-1, (Hkv, D))


@pytest.mark.parametrize("D,Hq,Hkv,masked", [(64, 4, 4, False), (128, 6, 2, True), (24, 3, 1, True)])
@pytest.mark.parametrize("path", ["kernel", "fallback"])
def test_decode_block_matches_fp64(monkeypatch, D, Hq, Hkv, masked, path):
    """The kernel, and the op's PyTorch fallback (where the kernels are not built), against fp64."""
    if path == "kernel":
        if build._compiler() is None:
            pytest.skip("no C compiler on this machine")
        counting = _Counting(build.load())
        monkeypatch.setattr(ops, "_lib", lambda: counting)
    else:
        monkeypatch.setattr(ops, "_lib", lambda: None)
    gen = torch.Generator().manual_seed(D + Hq)
    B, slots, t0 = 5, 40, 29
    qkv = (torch.randn(B, (Hq + 2 * Hkv) * D, generator=gen) * 0.5).bfloat16()
    rot = torch.polar(torch.ones(B, D // 2), torch.rand(B, D // 2, generator=gen) * 6)
    cache = torch.randn(2, 3, B, Hkv, slots, D, generator=gen).bfloat16()  # [k/v, layers, ...]: strided slices
    k, v = cache[0, 1], cache[1, 1]
    before = cache.clone()
    bias = None
    if masked:  # left padding: row r's first r slots masked
        bias = torch.zeros(B, slots)
        for r in range(B):
            bias[r, :r] = float("-inf")
    want, want_k, want_v = _decode_block_reference(qkv, rot, k, v, t0, bias, Hq)
    out = ops.decode_block(qkv, rot, k, v, t0, bias, Hq)
    assert out.dtype == torch.bfloat16 and out.shape == (B, Hq * D)
    if path == "kernel":
        assert counting.calls == {"t1_decode_block_bf16": 1}
    _close(out, want, 2 * BF16_ULP)
    _close(k[:, :, t0], want_k, BF16_ULP)
    assert torch.equal(v[:, :, t0], want_v.bfloat16())
    untouched = cache.clone()
    untouched[:, 1, :, :, t0] = before[:, 1, :, :, t0]
    assert torch.equal(untouched, before)  # nothing but slot t0 of this layer was written


def test_decode_block_rejects_bad_inputs():
    k = torch.zeros(2, 1, 8, 16).bfloat16()
    qkv, rot = torch.zeros(2, 3 * 16).bfloat16(), torch.ones(2, 8, dtype=torch.complex64)
    for bad in ({"t0": 8}, {"qkv": qkv.float()}, {"v": k.float()}, {"rot": rot[:, :4]}, {"n_heads": 3}):
        args = {"qkv": qkv, "rot": rot, "k": k, "v": k.clone(), "t0": 3, "bias": None, "n_heads": 1} | bad
        with pytest.raises(ValueError, match="decode block"):
            ops.decode_block(**args)


def _packed_attention_reference(qk, v, packed, seqs, Hq):
    """Causal attention per sequence in fp64 by plain ops, each flat row's output taken from the sequence that
    owns it (the first to hold it): [n, Hq·D], differentiable."""
    n, H, D = qk.shape
    g = Hq // (H - Hq)
    out = torch.zeros(n, Hq, D, dtype=torch.float64)
    owner = {}
    for i in sorted(range(len(seqs)), key=lambda i: (-len(seqs[i]), i)):  # Packed's order
        for t, f in enumerate(packed.index[i]):
            owner.setdefault(f, (i, t))
    for i, rows in enumerate(packed.index):
        r = torch.tensor(rows)
        q, k, vv = qk[r, :Hq], qk[r, Hq:].repeat_interleave(g, 1), v[r].repeat_interleave(g, 1)
        scores = torch.einsum("thd,shd->hts", q, k)
        scores = scores.masked_fill(~torch.ones(len(rows), len(rows), dtype=torch.bool).tril(), float("-inf"))
        o = torch.einsum("hts,shd->thd", torch.softmax(scores, -1), vv)
        mine = [t for t, f in enumerate(rows) if owner[f] == (i, t)]
        out = out.index_put((r[mine],), o[mine])
    return out.flatten(1)


@needs_cc
@pytest.mark.parametrize("D,Hq,Hkv", [(16, 2, 2), (24, 4, 2)])
def test_packed_attention_matches_fp64_with_shared_prefixes(counting, D, Hq, Hkv):
    """Sequences sharing a prompt (computed once, read by all its samples), a lone long one (longer than the
    kernel's key chunk), lengths off the query block: output and gradients against fp64."""
    gen = torch.Generator().manual_seed(D)
    a, b = torch.randint(3, 90, (7,), generator=gen).tolist(), torch.randint(3, 90, (5,), generator=gen).tolist()
    tails = [torch.randint(3, 90, (m,), generator=gen).tolist() for m in (9, 1, 20, 13, 4)]
    seqs = [a + tails[0], a + tails[1], b + tails[2], a + tails[3], b + tails[4],
            torch.randint(3, 90, (530,), generator=gen).tolist()]
    packed = Packed(seqs, "cpu", prefixes=[7, 7, 5, 7, 5, 0])
    n, H = packed.n, Hq + Hkv
    assert n == 7 + 9 + 1 + 13 + 5 + 20 + 4 + 530  # each prompt laid out once
    qkv = (torch.randn(n, (H + Hkv) * D, generator=gen) * 0.7).bfloat16().requires_grad_()
    qk, v = qkv.split([H * D, Hkv * D], dim=-1)
    qk, v = qk.unflatten(-1, (H, D)).contiguous(), v.unflatten(-1, (Hkv, D))  # v strided, as in the model
    dout = torch.randn(n, Hq * D, generator=gen).bfloat16()
    out = ops.packed_attention(qk, v, packed.layout, Hq, fallback=None)
    (grad,) = torch.autograd.grad(out, qkv, dout)
    assert counting.calls == {"t1_attn_scratch": 2, "t1_attn_fwd": 1, "t1_attn_bwd": 1}
    assert out.dtype == torch.bfloat16

    ref = qkv.detach().double().requires_grad_()
    rqk, rv = ref.split([H * D, Hkv * D], dim=-1)
    want = _packed_attention_reference(rqk.unflatten(-1, (H, D)), rv.unflatten(-1, (Hkv, D)), packed, seqs, Hq)
    (want_grad,) = torch.autograd.grad(want, ref, dout.double())
    _close(out, want.detach(), 2 * BF16_ULP)
    _close(grad, want_grad, 4 * BF16_ULP)


def test_packed_attention_falls_back_off_the_kernel_path():
    packed = Packed([[5, 6, 7], [8, 9]], "cpu")
    qk, v = torch.randn(5, 4, 8), torch.randn(5, 2, 8)  # fp32: not the kernel's
    assert ops.packed_attention(qk, v, packed.layout, 2, lambda q, w: "fallback") == "fallback"


def test_fallback_is_pytorch_ops(monkeypatch):
    monkeypatch.setattr(ops, "_lib", lambda: None)
    gu = torch.randn(5, 32).bfloat16()
    g, u = gu.chunk(2, dim=-1)
    assert torch.equal(ops.swiglu(gu), F.silu(g) * u)
    x = torch.randn(5, 2, 8).bfloat16()
    rot = torch.polar(torch.ones(5, 1, 4), torch.rand(5, 1, 4))
    want = torch.view_as_real(torch.view_as_complex(x.float().unflatten(-1, (4, 2))) * rot).flatten(-2).bfloat16()
    assert torch.equal(ops.rope(x, rot, torch.bfloat16), want)
    h = torch.randn(3, 7, 16)
    assert torch.equal(ops.rms_norm_to(h, 1e-5, torch.bfloat16), F.rms_norm(h, (16,), None, 1e-5).bfloat16())


@needs_cc
def test_training_forward_with_kernels_matches_without(monkeypatch):
    """bf16 autocast, packed batch: logits and every gradient agree with the PyTorch-ops path to bf16 noise."""
    tok = build_tokenizer(100)
    torch.manual_seed(0)
    model = build_model(ModelConfig(hidden=64, layers=2, heads=4, kv_heads=2, ffn=128), tok)
    gen = torch.Generator().manual_seed(0)
    seqs = [torch.randint(3, 100, (n,), generator=gen).tolist() for n in (9, 17, 3, 14, 12)]
    packed = Packed(seqs, "cpu")
    results, counting = [], _Counting(build.load())
    for lib in (counting, None):
        monkeypatch.setattr(ops, "_lib", lambda lib=lib: lib)
        model.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            logits = packed_logits(Prepared(model), packed)
        torch.log_softmax(logits.float(), -1)[:, 7].sum().backward()
        results.append((logits.detach().float(), {n: p.grad.clone() for n, p in model.named_parameters()}))
    (a, ga), (b, gb) = results
    # 2 layers, forward + backward; 5 norms (2 per layer and the final one)
    assert counting.calls == {"t1_rope": 4, "t1_swiglu_fwd": 2, "t1_swiglu_bwd": 2, "t1_rms_norm_fwd_f32": 5,
                              "t1_rms_norm_bwd": 5, "t1_attn_scratch": 4, "t1_attn_fwd": 2, "t1_attn_bwd": 2}
    torch.testing.assert_close(a, b, atol=0.05, rtol=0.02)
    for n in ga:
        scale = gb[n].abs().max().item() + 1e-6
        assert (ga[n] - gb[n]).abs().max().item() <= 0.05 * scale, n
