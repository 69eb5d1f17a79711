"""A fast batched sampler for Llama-family models (Llama, Qwen2, Mistral shapes) on the model's own weights.

Why our own decode loop: on small and mid-size models ``model.generate`` spends most of each step outside
the matrix products (building masks and caches, logits processors, stopping criteria, module dispatch).
This loop runs ~20 tensor ops per layer and step (~8 with the C kernels below): a static KV cache kept
between calls on the CPU (fresh multi-megabyte buffers cost page faults every call), q/k/v and gate/up
fused, the attention scale folded into q, RoPE as one complex multiply on q and k together (head rows
permuted to interleaved pairs at fusion time), residual adds folded into ``addmm``, every random number of a
chunk drawn up front, and finished rows swapped out of the batch so they stop costing compute. The
rearranged weights are cached until a parameter changes (its in-place version counter moves), and the
logits match transformers' (tested to 1e-5 in fp32).

Attention while decoding on the CPU runs in a small C kernel (:mod:`t1.model.kernels`, compiled at first
use) that reads the cache once and widens bf16 in registers, so with bf16 weights the cache is bf16 — half
the bytes that each step must stream; for bf16 models the whole attention block of a step (RoPE, cache
write, attention) is one kernel call, and RMSNorm and SwiGLU one each, so a layer costs about eight calls.
Without a C compiler it falls back to the PyTorch ops and batched matmuls over an fp32 cache (on GPUs too).

Sampling is *batch-invariant*: each row draws its uniform numbers from a counter-based hash of (its seed,
the step), and samples by inverse CDF over the temperature-scaled, top-p-truncated distribution. A sample
therefore depends on its prompt and seed alone, which lets N processes reproduce a 1-process run.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from t1.model.forward import Prepared, rope_table
from t1.model.kernels import build as _kernels
from t1.model.kernels import ops
from t1.rollout.base import Sample, SamplingParams

# -------------------------------------------------------------------------------------------- random


_M1 = -7046029254386353131  # 0x9E3779B97F4A7C15 as int64
_M2 = -4658895280553007687  # 0xBF58476D1CE4E5B9
_M3 = -7723592293110705685  # 0x94D049BB133111EB


def _shr(z: torch.Tensor, k: int) -> torch.Tensor:
    """Logical right shift of int64 (torch's ``>>`` is arithmetic: it copies the sign bit)."""
    return (z >> k) & ((1 << (64 - k)) - 1)


def uniform(seeds: torch.Tensor, step: int | torch.Tensor) -> torch.Tensor:
    """A float64 uniform in [0, 1) per (seed, step): splitmix64 on int64 (wrapping arithmetic). ``step`` is an
    int or a tensor broadcastable against ``seeds`` (e.g. seeds [B, 1] and steps [1, T] give [B, T])."""
    steps = torch.as_tensor(step, dtype=torch.long, device=seeds.device)
    z = seeds * _M1 + (steps + 1) * _M2
    z = (z ^ _shr(z, 30)) * _M2
    z = (z ^ _shr(z, 27)) * _M3
    z = z ^ _shr(z, 31)
    return _shr(z, 11).double() / float(1 << 53)


def sample_tokens(logits: torch.Tensor, u: torch.Tensor, temperature: float, top_p: float
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """Inverse-CDF sampling from softmax(logits / T) truncated to the top-p nucleus. [B, V], [B] -> tokens
    [B], log-probs [B] under the distribution actually sampled from."""
    logits = logits.float()
    if temperature <= 0:  # greedy
        return logits.argmax(-1), torch.zeros(logits.shape[0], device=logits.device)
    probs = torch.softmax(logits if temperature == 1.0 else logits / temperature, dim=-1)
    if top_p < 1.0:
        probs, order = probs.sort(dim=-1, descending=True)
        cum = probs.cumsum(-1)
        probs = probs.masked_fill(cum - probs > top_p, 0.0)  # keep the smallest prefix with mass ≥ top_p
    cum = probs.cumsum(-1)
    target = (u.to(cum.dtype) * cum[:, -1]).unsqueeze(-1)
    idx = torch.searchsorted(cum, target).clamp(max=probs.shape[-1] - 1)
    picked = probs.gather(-1, idx).squeeze(-1)
    logp = torch.log(picked / cum[:, -1])
    tokens = order.gather(-1, idx).squeeze(-1) if top_p < 1.0 else idx.squeeze(-1)
    return tokens, logp


# ----------------------------------------------------------------------------------------------- model


def _mkldnn_packing() -> bool:
    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")


class _Linear:
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


class _Weights:
    """The decode loop's copy of the transformers model's parameters, rearranged once for speed:

    - q/k/v and gate/up concatenated (one matmul each), each RMSNorm's weight folded into the next matrix;
    - q scaled by 1/sqrt(head_dim), so attention needs no separate scaling;
    - the rows of each q and k head permuted from the "rotate half" layout to interleaved pairs, so RoPE is a
      single complex multiply (q·k is unchanged: both sides get the same permutation);
    - cast to the sampling dtype, and on CPUs in bf16 reordered once into oneDNN's blocked layout (_Linear).

    Built lazily and kept until a parameter changes: the key holds each parameter's storage and in-place
    version counter, which every optimizer step bumps, so an RL step re-fuses exactly once.
    """

    def __init__(self, model, dtype):
        p = Prepared(model, dtype)  # the same rearrangement as t1's training forward
        self.n_heads, self.n_kv, self.head_dim, self.eps, self.inv_freq = p.nq, p.nkv, p.hd, p.eps, p.inv_freq
        self.dtype = dtype
        self.embed = p.embed.to(dtype)
        self.lm_head = _Linear(p.lm_head, p.lm_head_b)
        self.layers = [{"qkv": _Linear(qkv_w, qkv_b), "o": _Linear(o_w, o_b), "gu": _Linear(gu_w, gu_b),
                        "down": _Linear(down_w, down_b)}
                       for qkv_w, qkv_b, o_w, o_b, gu_w, gu_b, down_w, down_b in p.layers]

    @staticmethod
    def key(model, dtype) -> tuple:
        return (dtype,) + tuple((p.data_ptr(), p._version) for p in model.parameters())

    def rope_table(self, n: int) -> torch.Tensor:
        return rope_table(self.inv_freq, n)


def _plus(x: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    return x if bias is None else x + bias


def _attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
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


class FastEngine:
    """Batched sampling with a static KV cache; see the module doc."""

    shares_weights = True  # samples from the policy's own tensors: nothing to push

    def __init__(self, model, tokenizer, max_batch: int = 512, dtype: str = "auto", compact_at: float = 0.05,
                 kernel: bool = True):
        """``kernel``: decode attention on the CPU through :mod:`t1.model.kernels` where it can be built (False:
        batched matmuls over an fp32 cache, as without a C compiler)."""
        self.model, self.tokenizer = model, tokenizer
        self.max_batch = max_batch
        self.compact_at = compact_at
        self.eos = tokenizer.eos_token_id
        self.pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else self.eos
        self.dtype = dtype
        self._cached: tuple[tuple, _Weights] | None = None
        self._kv_buffer: torch.Tensor | None = None
        self.kernel = kernel

    def _dtype(self) -> torch.dtype:
        """"auto": bf16 where the hardware has fast bf16 (the sampler's logits then differ from the fp32
        policy's by bf16 rounding; training recomputes log-probs in its own precision), else the model's."""
        if self.dtype == "auto":
            from t1.runtime.device import resolve_precision

            device = next(self.model.parameters()).device
            if resolve_precision("auto", device) == "bf16":
                return torch.bfloat16
            return next(self.model.parameters()).dtype
        return getattr(torch, self.dtype)

    @torch.no_grad()
    def weights(self) -> _Weights:
        """The rearranged weights, rebuilt only when a parameter changed since the last call."""
        dtype = self._dtype()
        key = _Weights.key(self.model, dtype)
        if self._cached is None or self._cached[0] != key:
            self._cached = None  # free the old copy before building the new one
            self._cached = (key, _Weights(self.model, dtype))
        return self._cached[1]

    def _kv_cache(self, shape: tuple, dtype: torch.dtype, device: torch.device
                  ) -> tuple[torch.Tensor, torch.Tensor]:
        """K and V caches [layers, B, kv_heads, slots, head_dim] from ``shape``. Every slot is written before it
        is read, so they start uninitialised. On the CPU one buffer is kept between calls: fresh multi-megabyte
        allocations there cost more in page faults than a whole decode step."""
        n = math.prod(shape)
        if device.type != "cpu":
            buf = torch.empty(2 * n, dtype=dtype, device=device)
        else:
            if self._kv_buffer is None or self._kv_buffer.dtype != dtype or self._kv_buffer.numel() < 2 * n:
                self._kv_buffer = None
                self._kv_buffer = torch.empty(2 * n, dtype=dtype)
            buf = self._kv_buffer
        return buf[:n].view(shape), buf[n: 2 * n].view(shape)

    @torch.inference_mode()
    def generate(self, prompts: list[list[int]], seeds: list[int], params: SamplingParams) -> list[Sample]:
        if len(prompts) != len(seeds):
            raise ValueError(f"{len(prompts)} prompts but {len(seeds)} seeds")
        w = self.weights()
        # longest prompts first, so a chunk's left padding stays small
        order = sorted(range(len(prompts)), key=lambda i: -len(prompts[i]))
        results: dict[int, Sample] = {}
        for start in range(0, len(order), self.max_batch):
            chunk = order[start: start + self.max_batch]
            for i, s in zip(chunk, self._run(w, [prompts[i] for i in chunk], [seeds[i] for i in chunk], params)):
                results[i] = s
        return [results[i] for i in range(len(prompts))]

    @staticmethod
    def _forward(w: _Weights, x: torch.Tensor, rot: torch.Tensor, cache_k, cache_v, t0: int,
                 bias: torch.Tensor | None, lib=None) -> torch.Tensor:
        """x: [B, S] token ids at cache slots t0..t0+S-1; rot: [B, S, 1, head_dim/2] complex rotations of
        their positions; bias: [B, 1, S, t0+S] additive attention mask or None; lib: t1's kernels (decode
        attention when S == 1: for bf16 models the whole block, for fp32 ones the attention; RMSNorm and SwiGLU
        in bf16). Writes k/v into the caches. Returns last-position logits [B, V]. Norm weights are folded into the
        next matrix (:class:`t1.model.forward.Prepared`), so the norms here have none."""
        B, S = x.shape
        h = F.embedding(x, w.embed)
        nq, nkv, hd = w.n_heads, w.n_kv, w.head_dim
        # one decoding step of a bf16 model (the cache is bf16 only then, see _run): the whole block in one call
        fused = lib is not None and S == 1 and cache_k.dtype == torch.bfloat16
        for li, L in enumerate(w.layers):
            qkv = L["qkv"](ops.rms_norm_to(h, w.eps, w.dtype))
            ck, cv = cache_k[li], cache_v[li]
            if fused:
                att = ops.decode_block(lib, qkv.view(B, -1), rot.view(B, -1), ck, cv, t0,
                                       None if bias is None else bias[:, 0, 0], nq)
            else:
                qkv = qkv.float()
                qk = torch.view_as_complex(qkv[..., : (nq + nkv) * hd].unflatten(-1, (nq + nkv, hd // 2, 2)))
                qk = torch.view_as_real(qk * rot).flatten(-2)  # RoPE on q and k at once: [B, S, nq + nkv, hd]
                ck[:, :, t0: t0 + S] = qk[:, :, nq:].transpose(1, 2)
                cv[:, :, t0: t0 + S] = qkv[..., (nq + nkv) * hd:].unflatten(-1, (nkv, hd)).transpose(1, 2)
                if lib is not None and S == 1:
                    att = ops.decode_attention(lib, qk[:, 0, :nq], ck[:, :, : t0 + 1], cv[:, :, : t0 + 1],
                                               None if bias is None else bias[:, 0, 0])
                else:
                    att = _attention(qk[:, :, :nq], ck[:, :, : t0 + S], cv[:, :, : t0 + S], bias)
            h = L["o"](att.view(B, S, nq * hd).to(h.dtype), h)
            gu = L["gu"](ops.rms_norm_to(h, w.eps, w.dtype))
            if lib is not None:  # one pass in C for bf16 (else the same ops as below)
                act = ops.swiglu(gu)
            else:
                gate, up = gu.chunk(2, dim=-1)
                act = F.silu(gate).mul_(up)
            h = L["down"](act, h)
        return w.lm_head(ops.rms_norm_to(h[:, -1], w.eps, w.dtype))

    def _run(self, w: _Weights, prompts: list[list[int]], seeds: list[int], params: SamplingParams) -> list[Sample]:
        device = w.embed.device
        B, P, T = len(prompts), max(len(p) for p in prompts), params.max_new_tokens
        ids = torch.full((B, P), self.pad, dtype=torch.long)
        real = torch.ones((B, P + T), dtype=torch.bool)  # which cache slots hold real tokens
        for r, p in enumerate(prompts):
            ids[r, P - len(p):] = torch.tensor(p, dtype=torch.long)
            real[r, : P - len(p)] = False
        ids, real = ids.to(device), real.to(device)
        pad_count = (~real[:, :P]).sum(-1)  # [B]
        lib = _kernels.load() if self.kernel and device.type == "cpu" else None  # built once per process
        # bf16 weights give bf16 keys and values anyway; only the kernel reads a bf16 cache fast
        kv_dtype = torch.bfloat16 if lib is not None and w.dtype == torch.bfloat16 else torch.float32
        cache_k, cache_v = self._kv_cache((len(w.layers), B, w.n_kv, P + T, w.head_dim), kv_dtype, device)
        u = uniform(torch.tensor(seeds, dtype=torch.long, device=device)[:, None],
                    torch.arange(T, device=device)[None])  # [B, T]: every random number this chunk will use
        table = w.rope_table(P + T)[:, None]  # [P + T, 1, head_dim/2]
        neg_inf = torch.tensor(float("-inf"), device=device)

        # prefill: causal over the prompt, pads masked (a pad query attends to itself only, avoiding NaN)
        causal = torch.ones(P, P, dtype=torch.bool, device=device).tril()
        mask = (causal[None] & real[:, None, :P]) | torch.eye(P, dtype=torch.bool, device=device)[None]
        bias = torch.zeros(mask.shape, device=device).masked_fill_(~mask, neg_inf)[:, None]
        pos = (torch.arange(P, device=device)[None] - pad_count[:, None]).clamp(min=0)
        logits = self._forward(w, ids, table[pos], cache_k, cache_v, 0, bias)
        # decoding: only left padding needs masking, and only when some prompt is shorter than another
        pad_bias = (torch.zeros(real.shape, device=device).masked_fill_(~real, neg_inf)
                    if bool((~real).any()) else None)

        rows = torch.arange(B, device=device)  # original row of each active batch position
        out_tokens = torch.full((B, T), self.pad, dtype=torch.long, device=device)  # in original row order
        out_logps = torch.zeros((B, T), dtype=torch.float32, device=device)
        tokens = torch.empty((B, T), dtype=torch.long, device=device)  # per active batch position
        logps = torch.empty((B, T), dtype=torch.float32, device=device)
        alive = torch.ones(B, dtype=torch.bool, device=device)
        steps = 0
        for t in range(T):
            tok, lp = sample_tokens(logits, u[:, t], params.temperature, params.top_p)
            tokens[:, t], logps[:, t] = tok, lp
            steps = t + 1
            alive &= tok != self.eos  # a finished row's later tokens are ignored (cut at its first EOS)
            n_alive = int(alive.sum())
            if n_alive == 0 or steps == T:
                break
            slot = P + t
            if n_alive <= (1 - self.compact_at) * alive.numel():
                # drop finished rows: save their outputs, then move live rows from the tail into the holes
                # (copying only the cache slots used so far), so the live rows are a prefix of every tensor
                gone = (~alive).nonzero().squeeze(-1)
                out_tokens[rows[gone], :steps] = tokens[gone, :steps]
                out_logps[rows[gone], :steps] = logps[gone, :steps]
                holes = (~alive[:n_alive]).nonzero().squeeze(-1)
                movers = alive[n_alive:].nonzero().squeeze(-1) + n_alive
                per_row = [rows, tok, pad_count, u, tokens, logps] + ([pad_bias] if pad_bias is not None else [])
                for x in per_row:
                    x[holes] = x[movers]
                rows, tok, pad_count, u, tokens, logps = (x[:n_alive] for x in per_row[:6])
                pad_bias = pad_bias[:n_alive] if pad_bias is not None else None
                cache_k[:, holes, :, :slot] = cache_k[:, movers, :, :slot]
                cache_v[:, holes, :, :slot] = cache_v[:, movers, :, :slot]
                cache_k, cache_v = cache_k[:, :n_alive], cache_v[:, :n_alive]
                alive = torch.ones(n_alive, dtype=torch.bool, device=device)  # the prefix is now all live rows
            bias = pad_bias[:, None, None, : slot + 1] if pad_bias is not None else None
            logits = self._forward(w, tok[:, None], table[slot - pad_count][:, None], cache_k, cache_v, slot, bias,
                                   lib)
        out_tokens[rows, :steps] = tokens[:, :steps]
        out_logps[rows, :steps] = logps[:, :steps]

        out_tokens, out_logps = out_tokens[:, :steps].cpu(), out_logps[:, :steps].cpu()
        is_eos = out_tokens == self.eos
        finished = is_eos.any(-1)
        length = torch.where(finished, is_eos.int().argmax(-1) + 1, steps)
        samples = []
        for r in range(B):
            n = int(length[r])
            tl = out_tokens[r, :n].tolist()
            body = tl[:-1] if finished[r] else tl
            samples.append(Sample(tl, self.tokenizer.decode(body, skip_special_tokens=True), bool(finished[r]),
                                  out_logps[r, :n].tolist()))
        return samples
