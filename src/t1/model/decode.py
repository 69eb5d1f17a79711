"""One decoding (or prefill) step of a Llama-family model (Llama, Qwen2, Mistral shapes) over a static KV
cache: the model compute behind the fast sampler (:mod:`t1.rollout.fast`, which does the batching, sampling
and the generate loop).

Why our own step: on small and mid-size models ``model.generate`` spends most of each step outside the
matrix products (building masks and caches, logits processors, stopping criteria, module dispatch). This step
runs ~20 tensor ops per layer (~8 with the C kernels): q/k/v and gate/up fused, the attention scale folded into
q, RoPE as one complex multiply on q and k together (head rows permuted to interleaved pairs at fusion time:
the same rearrangement as t1's training forward, :class:`t1.model.forward.Prepared`), residual adds folded
into ``addmm``, and a KV cache buffer kept between calls on the CPU (fresh multi-megabyte buffers cost page
faults every call). The logits match transformers' (tested to 1e-5 in fp32).

Attention while decoding on the CPU runs in a small C kernel (:mod:`t1.model.kernels`, compiled at first
use) that reads the cache once and widens bf16 in registers, so with bf16 weights the cache is bf16 — half
the bytes that each step must stream; for bf16 models the whole attention block of a step (RoPE, cache
write, attention) is one kernel call, and RMSNorm and SwiGLU one each, so a layer costs about eight calls.
Without a C compiler it falls back to the PyTorch ops and batched matmuls over an fp32 cache (on GPUs too).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from t1.model.attention import causal_pairs, mask_bias
from t1.model.forward import Prepared, rope_table
from t1.model.kernels import ops


def _mkldnn_packing() -> bool:
    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")


def _plus(x: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    return x if bias is None else x + bias


class Linear:
    """y = x W^T + b (+ residual). On CPUs with bf16 weights the weight is reordered once into oneDNN's
    blocked layout (what PyTorch's compiler does for CPU inference): a plain-layout weight is re-blocked
    inside every call, which at decode-size batches costs as much as the product itself."""

    def __init__(self, w: torch.Tensor, b: torch.Tensor | None):
        self.w, self.b, self.packed = w, b, None
        if w.device.type == "cpu" and w.dtype == torch.bfloat16 and _mkldnn_packing():
            try:
                self.packed = torch.ops.mkldnn._reorder_linear_weight(w, 64)
            except RuntimeError:
                self.packed = None
        self.wt = w.t()

    def __call__(self, x: torch.Tensor, residual: torch.Tensor | None = None) -> torch.Tensor:
        shape = x.shape[:-1] + (self.w.shape[0],)
        x2 = x.reshape(-1, x.shape[-1])
        if self.packed is not None:
            if residual is None:
                y = torch.ops.mkldnn._linear_pointwise(x2, self.packed, self.b, "none", [], "")
            else:
                y = torch.ops.mkldnn._linear_pointwise.binary(x2, residual.reshape(x2.shape[0], -1), self.packed,
                                                               self.b, "add")
        elif residual is None:
            y = F.linear(x2, self.w, self.b)
        else:
            y = torch.addmm(_plus(residual.reshape(x2.shape[0], -1), self.b), x2, self.wt)
        return y.view(shape)


class Weights:
    """The decode step's copy of the transformers model's parameters, rearranged once for speed:

    - q/k/v and gate/up concatenated (one matmul each), each RMSNorm's weight folded into the next matrix;
    - q scaled by 1/sqrt(head_dim), so attention needs no separate scaling;
    - the rows of each q and k head permuted from the "rotate half" layout to interleaved pairs, so RoPE is a
      single complex multiply (q·k is unchanged: both sides get the same permutation);
    - cast to the sampling dtype, and on CPUs in bf16 reordered once into oneDNN's blocked layout
      (:class:`Linear`).

    Meant to be kept until a parameter changes: :meth:`key` holds each parameter's storage and in-place
    version counter, which every optimizer step bumps, so an RL step re-fuses exactly once.
    """

    def __init__(self, model, dtype):
        p = Prepared(model, dtype)  # the same rearrangement as t1's training forward
        self.n_heads, self.n_kv, self.head_dim, self.eps, self.inv_freq = p.nq, p.nkv, p.hd, p.eps, p.inv_freq
        self.dtype = dtype
        self.embed = p.embed.to(dtype)
        self.lm_head = Linear(p.lm_head, p.lm_head_b)
        self.layers = [{"qkv": Linear(qkv_w, qkv_b), "o": Linear(o_w, o_b), "gu": Linear(gu_w, gu_b),
                        "down": Linear(down_w, down_b)}
                       for qkv_w, qkv_b, o_w, o_b, gu_w, gu_b, down_w, down_b in p.layers]

    @staticmethod
    def key(model, dtype) -> tuple:
        return (dtype,) + tuple((p.data_ptr(), p._version) for p in model.parameters())

    def rope_table(self, n: int) -> torch.Tensor:
        return rope_table(self.inv_freq, n)


# ------------------------------------------------------------------------------------------- KV cache


def kv_dtype(w: Weights, kernels: bool) -> torch.dtype:
    """The cache dtype: bf16 weights give bf16 keys and values anyway, but only the kernel reads a bf16 cache
    fast (:func:`step` with ``kernels``), so bf16 only then, else fp32."""
    return torch.bfloat16 if kernels and w.dtype == torch.bfloat16 else torch.float32


class CacheBuffer:
    """Where the K and V caches live. Every slot is written before it is read, so they start uninitialised.
    On the CPU one buffer is kept between calls: fresh multi-megabyte allocations there cost more in page
    faults than a whole decode step."""

    def __init__(self):
        self._buffer: torch.Tensor | None = None

    def __call__(self, shape: tuple, dtype: torch.dtype, device: torch.device
                 ) -> tuple[torch.Tensor, torch.Tensor]:
        """K and V caches [layers, B, kv_heads, slots, head_dim] from ``shape``."""
        n = math.prod(shape)
        if device.type != "cpu":
            buf = torch.empty(2 * n, dtype=dtype, device=device)
        else:
            if self._buffer is None or self._buffer.dtype != dtype or self._buffer.numel() < 2 * n:
                self._buffer = None
                self._buffer = torch.empty(2 * n, dtype=dtype)
            buf = self._buffer
        return buf[:n].view(shape), buf[n: 2 * n].view(shape)


def prefill_bias(real: torch.Tensor) -> torch.Tensor:
    """[B, P] which prompt slots hold real tokens (left padding) -> [B, 1, P, P] additive fp32 bias: causal over
    the prompt, pads masked, a pad query seeing itself only (:func:`t1.model.attention.mask_bias`)."""
    return mask_bias(causal_pairs(real), torch.float32)[:, None]


def padding_bias(real: torch.Tensor) -> torch.Tensor | None:
    """[B, slots] which cache slots hold real tokens -> [B, slots] additive fp32 bias for decoding (whose
    queries are real: only left padding needs masking), or None when no slot is padding."""
    if not bool((~real).any()):
        return None
    return torch.zeros(real.shape, device=real.device).masked_fill_(~real, float("-inf"))


# ------------------------------------------------------------------------------------------- attention


def cache_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """Softmax attention in fp32 by batched matmuls (prefill; decoding where the kernel is not used);
    grouped-query heads share their k/v without copying them. q [B, S, Hq, D] fp32 (already scaled), k and v
    [B, Hkv, T, D] cache slices (fp32, or bf16: then widened here), bias [B, 1, S, T] additive (0 or -inf) or
    None -> [B, S, Hq*D] fp32. Measured on CPU for one-token decoding: fp32 batched matmuls are ~2× faster
    than bf16 ones and ~3-6× faster than ``scaled_dot_product_attention``."""
    B, S, Hq, D = q.shape
    Hkv, T = v.shape[1], v.shape[2]
    g = Hq // Hkv
    k, v = k.float(), v.float()
    qg = q.view(B, S, Hkv, g, D).permute(0, 2, 3, 1, 4).reshape(B * Hkv, g * S, D)
    scores = torch.bmm(qg, k.flatten(0, 1).transpose(1, 2))  # [B*Hkv, g*S, T]
    if bias is not None:
        scores.view(B, Hkv * g, S, T).add_(bias)
    probs = torch.softmax(scores, dim=-1)
    out = torch.bmm(probs, v.flatten(0, 1))  # [B*Hkv, g*S, D]
    return out.view(B, Hkv, g, S, D).permute(0, 3, 1, 2, 4).reshape(B, S, Hq * D)


def _attention_block(w: Weights, qkv: torch.Tensor, rot: torch.Tensor, ck: torch.Tensor, cv: torch.Tensor, t0: int,
                     bias: torch.Tensor | None, kernel: bool) -> torch.Tensor:
    """RoPE, cache write and attention for one layer: qkv [B, S, (nq + 2·nkv)·hd] (the fused projection) at
    cache slots t0..t0+S-1 of this layer's caches ck, cv -> [B, S·nq·hd]. ``kernel`` (one decoding step with
    the kernels): through :func:`t1.model.kernels.ops.decode_block` for a bf16 cache (the whole block), else
    :func:`~t1.model.kernels.ops.decode_attention`; without it, batched matmuls (:func:`cache_attention`)."""
    B, S, _ = qkv.shape
    nq, nkv, hd = w.n_heads, w.n_kv, w.head_dim
    if kernel and ck.dtype == torch.bfloat16:
        return ops.decode_block(qkv.view(B, -1), rot.view(B, -1), ck, cv, t0,
                                None if bias is None else bias[:, 0, 0], nq)
    qkv = qkv.float()
    qk = ops.rope(qkv[..., : (nq + nkv) * hd].unflatten(-1, (nq + nkv, hd)), rot, torch.float32)  # q and k at once
    ck[:, :, t0: t0 + S] = qk[:, :, nq:].transpose(1, 2)
    cv[:, :, t0: t0 + S] = qkv[..., (nq + nkv) * hd:].unflatten(-1, (nkv, hd)).transpose(1, 2)
    if kernel:
        return ops.decode_attention(qk[:, 0, :nq], ck[:, :, : t0 + 1], cv[:, :, : t0 + 1],
                                    None if bias is None else bias[:, 0, 0])
    return cache_attention(qk[:, :, :nq], ck[:, :, : t0 + S], cv[:, :, : t0 + S], bias)


def step(w: Weights, x: torch.Tensor, rot: torch.Tensor, cache_k: torch.Tensor, cache_v: torch.Tensor, t0: int,
         bias: torch.Tensor | None, kernels: bool = False) -> torch.Tensor:
    """x: [B, S] token ids at cache slots t0..t0+S-1; rot: [B, S, 1, head_dim/2] complex rotations of their
    positions; bias: [B, 1, S, t0+S] additive attention mask or None; cache_k, cache_v: [layers, B, kv_heads,
    slots, head_dim] (k and v are written into them). ``kernels``: a decoding step (S == 1) with t1's
    C kernels — the attention (for bf16 caches, see :func:`kv_dtype`, the whole block) and SwiGLU; the
    RMSNorms take the kernel in bf16 either way. Returns last-position logits [B, V]. Norm weights are folded
    into the next matrix (:class:`t1.model.forward.Prepared`), so the norms here have none."""
    B, S = x.shape
    h = F.embedding(x, w.embed)
    for li, L in enumerate(w.layers):
        qkv = L["qkv"](ops.rms_norm_to(h, w.eps, w.dtype))
        att = _attention_block(w, qkv, rot, cache_k[li], cache_v[li], t0, bias, kernels and S == 1)
        h = L["o"](att.view(B, S, w.n_heads * w.head_dim).to(h.dtype), h)
        gu = L["gu"](ops.rms_norm_to(h, w.eps, w.dtype))
        if kernels:  # one pass in C for bf16 (else the same ops as below)
            act = ops.swiglu(gu)
        else:
            gate, up = gu.chunk(2, dim=-1)
            act = F.silu(gate).mul_(up)
        h = L["down"](act, h)
    return w.lm_head(ops.rms_norm_to(h[:, -1], w.eps, w.dtype))
