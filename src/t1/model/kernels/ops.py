"""The tensor ops behind t1's C kernels, each with its PyTorch fallback (see the package doc).

- :func:`decode_attention`: one decoding step's attention over an fp32 KV cache (the decode step);
- :func:`decode_block`: one decoding step's whole attention block for bf16 models — RoPE, cache write,
  attention — in one call (the decode step);
- :func:`swiglu`: ``silu(gate) * up`` on a fused gate/up projection, differentiable;
- :func:`rope`: rotary position embedding as a complex multiply, differentiable;
- :func:`rms_norm_to`: an RMSNorm without weight, cast to the matrix dtype, differentiable;
- :func:`packed_attention`: causal attention over packed sequences (shared prefixes included), differentiable.

One calling convention: each op finds the compiled library itself (:func:`t1.model.kernels.build.load`,
through ``_lib``, the one indirection tests and benchmarks replace) and takes the kernel path for the CPU
tensors a kernel handles when the library is built, else PyTorch ops that compute the same function. The
kernels' results differ from the PyTorch ops' by rounding only (bf16: one rounding at the end instead of one
per op; fp32: summation order). Tested against fp64 references. :func:`available` says whether the library
is built (the reason it is not is logged once, by ``load``).
"""

from __future__ import annotations

import ctypes
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from t1.model.kernels.build import load


def _lib() -> ctypes.CDLL | None:
    return load()


def available() -> bool:
    """Whether the C kernels are usable here (built at the first call; where they cannot be, ``load`` logs
    why, once)."""
    return _lib() is not None


def _threads() -> int:
    return torch.get_num_threads()


# ------------------------------------------------------------------------------------- decode attention


def _softmax_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor | None
                       ) -> torch.Tensor:
    """The decode ops' PyTorch path, in fp32: q [B, Hq, D] (scaled, rotated), k and v [B, Hkv, T, D] (any float
    dtype), bias [B, ≥ T] additive or None -> [B, Hq·D] fp32."""
    B, Hq, D = q.shape
    Hkv, T = k.shape[1], k.shape[2]
    scores = torch.matmul(q.float().view(B, Hkv, Hq // Hkv, D), k.float().transpose(-1, -2))  # [B, Hkv, g, T]
    if bias is not None:
        scores = scores + bias[:, None, None, :T]
    return torch.matmul(torch.softmax(scores, dim=-1), v.float()).reshape(B, Hq * D)


def decode_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """One decoding step's attention, for fp32 caches (bf16 ones take :func:`decode_block`). q [B, Hq, D] fp32
    (scaled, rotated); k and v [B, Hkv, T, D] fp32 slices of the caches (same strides, last dimension
    contiguous); bias [B, T] additive (0 / -inf) or None -> [B, Hq * D] fp32. The kernel for CPU tensors."""
    B, Hq, D = q.shape
    Hkv, T = k.shape[1], k.shape[2]
    if (k.shape != v.shape or k.stride() != v.stride() or k.dtype != torch.float32 or v.dtype != torch.float32
            or k.stride(-1) != 1 or k.shape[0] != B or k.shape[3] != D or Hq % Hkv):
        raise ValueError(f"decode attention: bad cache slices k {tuple(k.shape)} {k.stride()} {k.dtype}, "
                         f"v {tuple(v.shape)} {v.stride()} {v.dtype}, for q {tuple(q.shape)}")
    lib = _lib() if k.device.type == "cpu" else None
    if lib is None:
        return _softmax_attention(q, k, v, bias)
    q = q.to(torch.float32).contiguous()
    pairs = B * Hq
    scores = torch.empty(pairs, T)
    args = (pairs, Hq, Hq // Hkv, D, T, k.stride(0), k.stride(1), k.stride(2), _threads())
    lib.t1_scores_f32(q.data_ptr(), k.data_ptr(), scores.data_ptr(), *args)
    if bias is not None:
        scores.view(B, Hq, T).add_(bias[:, None, :T])
    probs = torch.softmax(scores, dim=-1)
    out = torch.empty(B, Hq * D)
    lib.t1_pv_f32(probs.data_ptr(), v.data_ptr(), out.data_ptr(), *args)
    return out


def _decode_block_torch(qkv: torch.Tensor, rot: torch.Tensor, k: torch.Tensor, v: torch.Tensor, t0: int,
                        bias: torch.Tensor | None, n_heads: int) -> torch.Tensor:
    B, Hkv, _, D = k.shape
    x = qkv.float()
    qk = rope(x[:, : (n_heads + Hkv) * D].unflatten(-1, (n_heads + Hkv, D)), rot[:, None], torch.float32)
    k[:, :, t0] = qk[:, n_heads:]
    v[:, :, t0] = x[:, (n_heads + Hkv) * D:].unflatten(-1, (Hkv, D))
    return _softmax_attention(qk[:, :n_heads], k[:, :, : t0 + 1], v[:, :, : t0 + 1], bias).to(torch.bfloat16)


def decode_block(qkv: torch.Tensor, rot: torch.Tensor, k: torch.Tensor, v: torch.Tensor, t0: int,
                 bias: torch.Tensor | None, n_heads: int) -> torch.Tensor:
    """One decoding step's attention block for bf16 models: RoPE on the new token's q and k, k and v written
    into the caches at slot ``t0``, attention over slots 0..t0. qkv [B, (Hq + 2·Hkv)·D] bf16 (the fused
    projection, q pre-scaled); rot [B, D/2] complex64, the rotation of each row's new position; k and v
    [B, Hkv, slots, D] bf16 cache slices (same strides, last dimension contiguous, slots > t0); bias
    [B, ≥ t0 + 1] additive (0 / -inf, fp32) or None -> [B, Hq·D] bf16. One kernel call for CPU tensors."""
    B, Hkv, slots, D = k.shape
    if (k.shape != v.shape or k.stride() != v.stride() or k.dtype != torch.bfloat16 or v.dtype != torch.bfloat16
            or k.stride(-1) != 1 or not 0 <= t0 < slots or n_heads % Hkv or D % 2
            or qkv.shape != (B, (n_heads + 2 * Hkv) * D) or qkv.dtype != torch.bfloat16
            or rot.shape != (B, D // 2) or rot.dtype != torch.complex64
            or (bias is not None and (bias.shape[0] != B or bias.shape[1] <= t0 or bias.dtype != torch.float32))):
        raise ValueError(f"decode block: bad inputs qkv {tuple(qkv.shape)} {qkv.dtype}, rot {tuple(rot.shape)} "
                         f"{rot.dtype}, caches {tuple(k.shape)} {k.stride()} {k.dtype} / {tuple(v.shape)} "
                         f"{v.stride()} {v.dtype}, slot {t0}, {n_heads} query heads")
    lib = _lib() if k.device.type == "cpu" else None
    if lib is None:
        return _decode_block_torch(qkv, rot, k, v, t0, bias, n_heads)
    qkv, rot = qkv.contiguous(), torch.view_as_real(rot.contiguous())
    if bias is not None and bias.stride(-1) != 1:
        bias = bias.contiguous()
    out = torch.empty(B, n_heads * D, dtype=torch.bfloat16)
    scratch = torch.empty(B * n_heads, t0 + 1)
    lib.t1_decode_block_bf16(qkv.data_ptr(), rot.data_ptr(), k.data_ptr(), v.data_ptr(),
                             None if bias is None else bias.data_ptr(), 0 if bias is None else bias.stride(0),
                             out.data_ptr(), scratch.data_ptr(), B, n_heads, Hkv, D, t0, k.stride(0), k.stride(1),
                             k.stride(2), _threads())
    return out


# ------------------------------------------------------------------------------------------------ SwiGLU


class _SwiGLU(torch.autograd.Function):
    @staticmethod
    def forward(ctx, gu: torch.Tensor, lib) -> torch.Tensor:
        n, f2 = gu.numel() // gu.shape[-1], gu.shape[-1]
        out = gu.new_empty(gu.shape[:-1] + (f2 // 2,))
        lib.t1_swiglu_fwd(gu.data_ptr(), out.data_ptr(), n, f2 // 2, f2, _threads())
        ctx.save_for_backward(gu)
        ctx.lib = lib
        return out

    @staticmethod
    def backward(ctx, dout: torch.Tensor):
        (gu,) = ctx.saved_tensors
        n, f2 = gu.numel() // gu.shape[-1], gu.shape[-1]
        dout = dout.to(torch.bfloat16).contiguous()
        dgu = torch.empty_like(gu)
        ctx.lib.t1_swiglu_bwd(gu.data_ptr(), dout.data_ptr(), dgu.data_ptr(), n, f2 // 2, f2, _threads())
        return dgu, None


def swiglu(gu: torch.Tensor) -> torch.Tensor:
    """``silu(gate) * up`` where ``gate, up = gu.chunk(2, dim=-1)``: [..., 2f] -> [..., f]."""
    lib = _lib() if gu.device.type == "cpu" and gu.dtype == torch.bfloat16 and gu.is_contiguous() else None
    if lib is None or gu.shape[-1] % 2:
        gate, up = gu.chunk(2, dim=-1)
        return F.silu(gate) * up
    return _SwiGLU.apply(gu, lib)


# -------------------------------------------------------------------------------------------------- RoPE


def _rope_kernel(lib, x: torch.Tensor, rot: torch.Tensor, conj: bool) -> torch.Tensor:
    n, H, hd = x.shape
    y = torch.empty(n, H, hd, dtype=torch.bfloat16)
    lib.t1_rope(x.data_ptr(), rot.data_ptr(), y.data_ptr(), n, H, hd, x.stride(0), rot.stride(0), int(conj),
                _threads())
    return y


class _RoPE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, rot: torch.Tensor, lib) -> torch.Tensor:
        ctx.save_for_backward(rot)
        ctx.lib = lib
        return _rope_kernel(lib, x, rot, conj=False)

    @staticmethod
    def backward(ctx, dy: torch.Tensor):
        (rot,) = ctx.saved_tensors
        return _rope_kernel(ctx.lib, dy.to(torch.bfloat16).contiguous(), rot, conj=True), None, None


def rope(x: torch.Tensor, rot: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Rotary embedding: each head's element pairs (2i, 2i+1) as a complex number times ``rot[..., i]``.
    x [..., H, hd] (any float dtype; heads and elements contiguous), rot complex64 broadcastable to
    [..., 1, hd/2] -> [..., H, hd] in ``dtype``, computed in fp32."""
    *lead, H, hd = x.shape
    lib = None
    if (x.device.type == "cpu" and x.dtype == torch.bfloat16 and dtype == torch.bfloat16 and x.stride(-1) == 1
            and x.stride(-2) == hd and hd % 2 == 0):
        lib = _lib()
    if lib is not None:  # rows of heads, any row stride (a reshape keeps the heads contiguous, or copies)
        rows = torch.view_as_real(rot.expand(*lead, 1, hd // 2).reshape(-1, hd // 2)).contiguous()
        return _RoPE.apply(x.reshape(-1, H, hd), rows.view(-1, hd), lib).view(*lead, H, hd)
    z = torch.view_as_complex(x.float().unflatten(-1, (hd // 2, 2)))
    return torch.view_as_real(z * rot).flatten(-2).to(dtype)


# ----------------------------------------------------------------------------------------------- RMSNorm


def _rms_norm_kernel(lib, x: torch.Tensor, eps: float) -> torch.Tensor:
    """bf16(x / rms(x)) for fp32 or bf16 x through the kernel: rows of the last dimension, any row stride."""
    H = x.shape[-1]
    if not (x.is_contiguous() or (x.dim() == 2 and x.stride(-1) == 1)):
        x = x.contiguous()
    n = x.numel() // H
    y = torch.empty(x.shape, dtype=torch.bfloat16)
    fn = lib.t1_rms_norm_fwd_f32 if x.dtype == torch.float32 else lib.t1_rms_norm_fwd_bf16
    fn(x.data_ptr(), x.stride(-2) if x.dim() > 1 else H, y.data_ptr(), n, H, eps, _threads())
    return y


class _RMSNormTo(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, eps: float, lib) -> torch.Tensor:
        ctx.save_for_backward(x)
        ctx.eps, ctx.lib = eps, lib
        return _rms_norm_kernel(lib, x, eps)

    @staticmethod
    def backward(ctx, dy: torch.Tensor):
        (x,) = ctx.saved_tensors
        dy = dy.to(torch.bfloat16).contiguous()
        dx = torch.empty_like(x)
        ctx.lib.t1_rms_norm_bwd(x.data_ptr(), dy.data_ptr(), dx.data_ptr(), x.numel() // x.shape[-1], x.shape[-1],
                                ctx.eps, _threads())
        return dx, None, None


def rms_norm_to(x: torch.Tensor, eps: float, dtype: torch.dtype) -> torch.Tensor:
    """``F.rms_norm(x, (H,), None, eps).to(dtype)``. For fp32 or bf16 x and bf16 output on the CPU, one pass in C
    (PyTorch's takes three: up-cast, norm, down-cast); its backward, for fp32 x, one pass in C too (PyTorch's
    takes about ten). bf16 x with a gradient takes the PyTorch ops."""
    if (x.device.type == "cpu" and dtype == torch.bfloat16 and x.dtype in (torch.float32, torch.bfloat16)
            and x.numel() > 0):
        needs_grad = x.requires_grad and torch.is_grad_enabled()
        lib = _lib() if not needs_grad or (x.dtype == torch.float32 and x.is_contiguous()) else None
        if lib is not None:
            return _RMSNormTo.apply(x, eps, lib) if needs_grad else _rms_norm_kernel(lib, x, eps)
    return F.rms_norm(x, (x.shape[-1],), None, eps).to(dtype)


# ------------------------------------------------------------------------------------ packed attention


@dataclass(frozen=True)
class PackedLayout:
    """Which flat rows make up each sequence of a packed batch (built by :class:`t1.model.forward.Packed`), as
    int32 CPU tensors: sequence s is rows ``seq_idx[seq_ptr[s]:seq_ptr[s + 1]]`` in order, and computes its queries
    from position ``own_from[s]`` on (earlier ones are a shared prefix computed by another sequence); unit u,
    sequences ``unit_seqs[unit_ptr[u]:unit_ptr[u + 1]]``, is every sequence sharing rows with the others."""

    seq_ptr: torch.Tensor
    seq_idx: torch.Tensor
    own_from: torch.Tensor
    unit_ptr: torch.Tensor
    unit_seqs: torch.Tensor
    max_len: int


def _attn_scratch(lib, layout: PackedLayout, D: int, backward: bool) -> tuple[torch.Tensor, int]:
    """Each thread's fp32 working buffers (the kernel's key/value copies and score blocks), on its own cache
    lines: about 6 × longest sequence × head size floats per thread for the backward (e.g. 50 MB at 16k
    tokens and head size 128)."""
    stride = -(-lib.t1_attn_scratch(layout.max_len, D, int(backward)) // 16) * 16
    return torch.empty(_threads() * stride), stride


class _PackedAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, qk: torch.Tensor, v: torch.Tensor, layout: PackedLayout, n_heads: int, lib) -> torch.Tensor:
        n, H, D = qk.shape
        out = torch.empty(n, n_heads * D, dtype=torch.bfloat16)
        lse = torch.empty(n, n_heads)
        scratch, stride = _attn_scratch(lib, layout, D, backward=False)
        lib.t1_attn_fwd(qk.data_ptr(), qk.stride(0), v.data_ptr(), v.stride(0), layout.seq_ptr.data_ptr(),
                        layout.seq_idx.data_ptr(), layout.own_from.data_ptr(), len(layout.own_from), n_heads,
                        H - n_heads, D, out.data_ptr(), lse.data_ptr(), scratch.data_ptr(), stride, _threads())
        ctx.save_for_backward(qk, v, lse)
        ctx.layout, ctx.n_heads, ctx.lib = layout, n_heads, lib
        return out

    @staticmethod
    def backward(ctx, dout: torch.Tensor):
        qk, v, lse = ctx.saved_tensors
        layout, n_heads = ctx.layout, ctx.n_heads
        n, H, D = qk.shape
        dout = dout.to(torch.bfloat16).contiguous()
        dqk, dv = torch.zeros(n, H, D), torch.zeros(n, H - n_heads, D)
        scratch, stride = _attn_scratch(ctx.lib, layout, D, backward=True)
        ctx.lib.t1_attn_bwd(qk.data_ptr(), qk.stride(0), v.data_ptr(), v.stride(0), layout.seq_ptr.data_ptr(),
                            layout.seq_idx.data_ptr(), layout.own_from.data_ptr(), layout.unit_ptr.data_ptr(),
                            layout.unit_seqs.data_ptr(), len(layout.unit_ptr) - 1, n_heads, H - n_heads, D,
                            lse.data_ptr(), dout.data_ptr(), dqk.data_ptr(), dv.data_ptr(),
                            scratch.data_ptr(), stride, _threads())
        return dqk.to(torch.bfloat16), dv.to(torch.bfloat16), None, None, None


def packed_attention(qk: torch.Tensor, v: torch.Tensor, layout: PackedLayout, n_heads: int,
                     fallback: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """Causal softmax attention over the sequences of a packed batch: qk [n, Hq + Hkv, D] (rotated q heads,
    pre-scaled, then k heads), v [n, Hkv, D] -> [n, Hq·D], each flat row's output computed once. bf16 CPU
    tensors (heads contiguous, any row stride) take the kernel: fp32 math, no padding, no T×T tensors;
    anything else, ``fallback(qk, v)``."""
    n, H, D = qk.shape
    Hkv = H - n_heads
    lib = None
    if (qk.device.type == "cpu" and qk.dtype == v.dtype == torch.bfloat16 and 0 < Hkv and n_heads % Hkv == 0
            and v.shape == (n, Hkv, D) and qk.stride()[1:] == (D, 1) and v.stride()[1:] == (D, 1)):
        lib = _lib()
    if lib is None:
        return fallback(qk, v)
    return _PackedAttention.apply(qk, v, layout, n_heads, lib)
