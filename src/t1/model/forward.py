"""A differentiable forward pass for Llama-family models (Llama, Qwen2, Mistral shapes) over the
transformers model's own parameters, for the training passes of `t1 sft` and `t1 rl`.

Why: on small and mid-size models the matrix products are a minority of a transformers forward+backward on a
CPU; the rest is element-wise passes over [tokens, hidden] activations (RMSNorm as seven ops, RoPE as
rotate-half with a concatenation and four products, a separate attention scale, mask building). This pass
computes the same function with about half the activation passes:

- q/k/v and gate/up weights concatenated each call (cheap: weights are small next to activations), so one
  matrix product each; gradients flow back through the concatenation to the original parameters;
- the attention scale folded into q's weights and q/k head rows permuted to interleaved pairs, so RoPE is one
  complex multiply on q and k together (q·k is unchanged: both sides get the same permutation);
- the fused ``rms_norm`` kernel; attention as ``baddbmm`` with an additive causal/padding bias;
- in bf16 on CPUs, SwiGLU, RoPE and RMSNorm (forward and backward) in one pass each, and attention over
  packed sequences in one kernel that never pads or materialises T×T scores (:mod:`t1.model.kernels`).

The decode step (:mod:`t1.model.decode`, behind the fast sampler) starts from the same rearranged weights
(:class:`Prepared`), RoPE table and mask rule (:mod:`t1.model.attention`).
It reads the parameters on every call (nothing to keep in sync), matches transformers' logits to 1e-5 in
fp32 (tested), and is used only where nothing wraps the forward: a single process. Under DDP / FSDP /
DeepSpeed the trainers call the wrapped model, whose forward arms the gradient all-reduce.
"""

from __future__ import annotations

import functools
import itertools

import torch
import torch.nn.functional as F

from t1.config import option
from t1.model import lora
from t1.model.attention import causal_pairs, mask_bias
from t1.model.kernels import ops

_FAMILY = {"llama", "qwen2", "mistral"}


def fast_forward_option():
    """The ``train.fast_forward`` field of `t1 sft` and `t1 rl`."""
    return option(True, "on one process, run Llama-family models through t1's own forward pass (fewer "
                        "element-wise passes; same function, tested)")


def llama_family(model) -> bool:
    """Llama-family shapes this module and the fast sampler compute: default RoPE, SiLU MLP, no sliding window
    (biases on any projection are fine)."""
    cfg = lora.base_of(model).config
    rope = getattr(cfg, "rope_scaling", None) or {}
    rope_type = rope.get("rope_type", rope.get("type", "default")) if isinstance(rope, dict) else "default"
    return (cfg.model_type in _FAMILY and rope_type in (None, "default")
            and getattr(cfg, "hidden_act", "silu") == "silu" and not getattr(cfg, "sliding_window", None))


def supports(model) -> bool:
    """For training: the family above, without attention dropout (a training-time op this pass skips)."""
    return (llama_family(model) and not getattr(lora.base_of(model).config, "attention_dropout", 0.0)
            and not lora.has_dropout(model))


class Forward:
    """(input_ids, attention_mask[, prepared]) -> logits [B, T, V]: this module's pass on ``raw``'s parameters
    when ``fast``, the architecture is supported and nothing wraps the model (``model is raw``: one process),
    else the (possibly wrapped) model's own forward. ``prepare()`` gives the weights to reuse across several
    calls (see :class:`Prepared`), or None where the model's own forward is used; call it under the autocast
    the passes will run in."""

    def __init__(self, model, raw=None, fast: bool = True):
        self.model, self.raw = model, (model if raw is None else raw)
        self.fast = fast and model is self.raw and supports(self.raw)

    def prepare(self) -> Prepared | None:
        return Prepared(self.raw) if self.fast else None

    def __call__(self, ids: torch.Tensor, attn: torch.Tensor, prepared: Prepared | None = None) -> torch.Tensor:
        if self.fast:
            return forward_logits(self.raw, ids, attn, prepared)
        return self.model(input_ids=ids, attention_mask=attn).logits


def rope_table(inv_freq: torch.Tensor, n: int) -> torch.Tensor:
    """cos + i·sin of position × frequency for positions 0..n-1: [n, head_dim/2] complex64."""
    angles = torch.arange(n, device=inv_freq.device, dtype=torch.float32)[:, None] * inv_freq
    return torch.polar(torch.ones_like(angles), angles)


def _pair_order(hd: int, device) -> torch.Tensor:
    """Row order that turns each head's "rotate half" layout (x_0..x_{d/2-1}, x_{d/2}..) into pairs."""
    half = torch.arange(hd // 2, device=device)
    return torch.stack([half, half + hd // 2], dim=1).flatten()


def _heads(t: torch.Tensor | None, n: int, hd: int, order: torch.Tensor, scale: float = 1.0):
    if t is None:
        return None
    out = t.view(n, hd, *t.shape[1:]).index_select(1, order).reshape(t.shape)
    return out * scale if scale != 1.0 else out


def _cat(*ts):
    return None if ts[0] is None else torch.cat(ts)


class Prepared:
    """The weights rearranged for :func:`forward_logits` / :func:`packed_logits` (and, cast to its dtype, for the
    decode step in :mod:`t1.model.decode`), built from the parameters by differentiable ops (concatenation,
    row permutation, scaling, and the cast to the autocast dtype when autocast is on), so gradients reach the
    original parameters. Each RMSNorm's weight is folded into the columns of the matrix that reads its output
    (W·diag(g)), so the passes normalise without a weight: one activation-sized multiply fewer per norm
    forward and two backward, for a weight-sized one. Build once and reuse across the micro-batches of one
    step when all their losses go into a single backward, or for passes without gradients; otherwise let
    ``forward_logits`` build its own per call (a backward frees the graph it walks).

    ``layers``: per layer (qkv_w, qkv_b, o_w, o_b, gu_w, gu_b, down_w, down_b); biases may be None."""

    def __init__(self, model, dtype: torch.dtype | None = None):
        """``dtype``: what the matrices are cast to; None = the autocast dtype when autocast is on, else none."""
        model = lora.base_of(model)  # LoRA: each projection read as W + (α/r)·B·A (lora.weight)
        cfg, core = model.config, model.model
        self.nq = nq = cfg.num_attention_heads
        self.nkv = nkv = getattr(cfg, "num_key_value_heads", None) or nq
        self.hd = hd = getattr(cfg, "head_dim", None) or cfg.hidden_size // nq
        self.eps = cfg.rms_norm_eps
        device = core.embed_tokens.weight.device
        dt = dtype
        if dt is None and torch.is_autocast_enabled(device.type):
            dt = torch.get_autocast_dtype(device.type)
        self.dtype = dt or core.embed_tokens.weight.dtype  # what the matrix products run in

        def cast(t):
            return t if t is None or dt is None else t.to(dt)

        order, scale = _pair_order(hd, device), hd ** -0.5
        W = lora.weight
        self.embed = core.embed_tokens.weight
        self.padding_idx = core.embed_tokens.padding_idx  # its row gets no gradient from lookups, as in torch
        self.inv_freq = core.rotary_emb.inv_freq.to(device=device, dtype=torch.float32)
        self.layers = []
        for layer in core.layers:
            a, m = layer.self_attn, layer.mlp
            ln1, ln2 = layer.input_layernorm.weight, layer.post_attention_layernorm.weight
            qkv = torch.cat([_heads(W(a.q_proj), nq, hd, order, scale),
                             _heads(W(a.k_proj), nkv, hd, order), W(a.v_proj)])
            self.layers.append((
                cast(qkv * ln1),
                cast(_cat(_heads(a.q_proj.bias, nq, hd, order, scale), _heads(a.k_proj.bias, nkv, hd, order),
                          a.v_proj.bias)),
                cast(W(a.o_proj)), cast(a.o_proj.bias),
                cast(torch.cat([W(m.gate_proj), W(m.up_proj)]) * ln2),
                cast(_cat(m.gate_proj.bias, m.up_proj.bias)),
                cast(W(m.down_proj)), cast(m.down_proj.bias),
            ))
        head = model.get_output_embeddings()
        self.lm_head, self.lm_head_b = cast(W(head) * core.norm.weight), cast(getattr(head, "bias", None))


def _attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor, g: int) -> torch.Tensor:
    """Causal softmax attention over padded sequences, softmax in fp32. q [B, T, nq, hd], k and v
    [B, T, nkv, hd], bias [B·nq, T, T] additive, all in the matrix dtype -> [B, T, nq·hd]."""
    B, T, nq, hd = q.shape
    nkv = k.shape[2]
    q = q.transpose(1, 2).reshape(B * nq, T, hd)
    k, v = k.transpose(1, 2), v.transpose(1, 2)  # [B, nkv, T, hd]
    if g > 1:  # grouped-query attention: each k/v head serves g query heads
        k = k[:, :, None].expand(B, nkv, g, T, hd)
        v = v[:, :, None].expand(B, nkv, g, T, hd)
    k = k.reshape(B * nq, T, hd)
    v = v.reshape(B * nq, T, hd)
    probs = torch.softmax(torch.baddbmm(bias, q, k.transpose(1, 2)), dim=-1, dtype=torch.float32)
    att = torch.bmm(probs.to(v.dtype), v)
    return att.view(B, nq, T, hd).transpose(1, 2).reshape(B, T, nq * hd)


def _mask_bias(allowed: torch.Tensor, nq: int, dtype: torch.dtype) -> torch.Tensor:
    """[B, T, T] allowed-pairs mask -> [B·nq, T, T] additive bias (:func:`t1.model.attention.mask_bias`: a pad
    query may see itself, no NaN), one copy per query head."""
    B, T, _ = allowed.shape
    return mask_bias(allowed, dtype)[:, None].expand(B, nq, T, T).reshape(B * nq, T, T)


def _layers(w: Prepared, h: torch.Tensor, rot: torch.Tensor, attend) -> torch.Tensor:
    """The decoder layers on hidden states h [..., H] (any leading shape; the residual stream stays in h's
    dtype), RoPE rotations ``rot`` broadcastable to [..., heads, hd/2], and ``attend(qk, v)`` (q and k heads
    together [..., nq + nkv, hd], v [..., nkv, hd], in the matrix dtype -> [..., nq·hd]). Splits rather than
    slices, so the backward concatenates gradients instead of zero-filling a buffer per slice."""
    nq, nkv, hd = w.nq, w.nkv, w.hd
    for qkv_w, qkv_b, o_w, o_b, gu_w, gu_b, down_w, down_b in w.layers:
        qkv = F.linear(ops.rms_norm_to(h, w.eps, w.dtype), qkv_w, qkv_b)
        qk, v = qkv.split([(nq + nkv) * hd, nkv * hd], dim=-1)
        qk = ops.rope(qk.unflatten(-1, (nq + nkv, hd)), rot, w.dtype)  # q and k at once, in fp32
        h = h + F.linear(attend(qk, v.unflatten(-1, (nkv, hd))), o_w, o_b)
        h = h + F.linear(ops.swiglu(F.linear(ops.rms_norm_to(h, w.eps, w.dtype), gu_w, gu_b)), down_w, down_b)
    return h


def forward_logits(model, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                   prepared: Prepared | None = None) -> torch.Tensor:
    """Logits [B, T, V] of a right-padded batch, as ``model(input_ids, attention_mask).logits`` (positions
    0..T-1 for every row; pad keys masked). Runs under whatever autocast the caller set."""
    w = prepared if prepared is not None else Prepared(model)
    B, T = input_ids.shape
    device = input_ids.device
    valid = torch.ones(B, T, dtype=torch.bool, device=device) if attention_mask is None else attention_mask.bool()
    bias = _mask_bias(causal_pairs(valid), w.nq, w.dtype)
    rot = rope_table(w.inv_freq, T)[:, None]  # [T, 1, hd/2]
    nq, g = w.nq, w.nq // w.nkv

    def attend(qk, v):
        q, k = qk.split([nq, qk.shape[-2] - nq], dim=-2)
        return _attend(q, k, v, bias, g)

    h = _layers(w, F.embedding(input_ids, w.embed, w.padding_idx), rot, attend)
    return F.linear(ops.rms_norm_to(h, w.eps, w.dtype), w.lm_head, w.lm_head_b)


class Packed:
    """Sequences laid end to end without padding ("remove padding"), for :func:`packed_logits`: the per-token
    work (norms, projections, MLP — nearly all the FLOPs) runs on real tokens only and in one large matrix
    product per weight, and attention runs per group of similar-length sequences, padded within its group.

    Shared prefixes: with ``prefixes[i]`` = n, the first n tokens of sequence i are laid out once for all the
    sequences that start with the same n tokens (the K samples of one prompt, in RL), and those sequences'
    later tokens attend to that one copy. Under causal attention a prefix's hidden states do not depend on
    what follows it, so this computes exactly the same function, with the prompt's share of the work done
    once per prompt instead of once per sample; gradients from every sample reach the shared copy.

    ``seqs`` in any order; they are laid out longest first. ``index[i]`` lists the flat position of each token
    of sequence i (``flat(i, t)`` one of them). A group closes when the next sequence is shorter than ``ratio``
    × the group's longest, which bounds the padding that attention computes.
    """

    def __init__(self, seqs: list[list[int]], device, ratio: float = 0.7, prefixes: list[int] | None = None):
        order = sorted(range(len(seqs)), key=lambda i: (-len(seqs[i]), i))
        lengths = [len(seqs[i]) for i in order]
        if not lengths or min(lengths) < 1:
            raise ValueError("Packed needs at least one sequence and no empty ones")
        self.index: list[list[int]] = [[] for _ in seqs]
        own_froms = [0] * len(seqs)
        shared: dict[tuple, list[int]] = {}  # prefix tokens -> their flat positions
        flat_ids: list[int] = []
        positions: list[int] = []
        for i in order:
            seq, n_pre = seqs[i], (prefixes[i] if prefixes is not None else 0)
            head = shared.get(tuple(seq[:n_pre])) if n_pre else None
            own_from = own_froms[i] = n_pre if head is not None else 0
            own = list(range(len(flat_ids), len(flat_ids) + len(seq) - own_from))
            flat_ids.extend(seq[own_from:])
            positions.extend(range(own_from, len(seq)))
            self.index[i] = (head if head is not None else []) + own
            if n_pre and head is None:
                shared[tuple(seq[:n_pre])] = own[:n_pre]
        self.n = len(flat_ids)
        self.ids = torch.tensor(flat_ids, dtype=torch.long, device=device)
        self.positions = torch.tensor(positions, dtype=torch.long, device=device)
        self.max_len = lengths[0]
        # groups of consecutive sequences, each padded to its longest: (allowed-pairs mask [b, T, T], b, T);
        # one gather index for all groups (flat token of each padded slot; padding reads its row's first token,
        # masked as a key, dropped as a query) and one scatter index back (the padded slot whose output each
        # flat token takes: the first row that holds it)
        self.groups, gather = [], []
        back = [-1] * self.n
        first, slot = 0, 0
        for j in range(1, len(lengths) + 1):
            if j < len(lengths) and lengths[j] >= ratio * lengths[first]:
                continue
            rows = order[first:j]
            T = lengths[first]
            valid = torch.zeros(len(rows), T, dtype=torch.bool)
            for r, i in enumerate(rows):
                idx = self.index[i]
                gather.extend(idx)
                gather.extend([idx[0]] * (T - len(idx)))
                for t, f in enumerate(idx):
                    if back[f] < 0:
                        back[f] = slot + t
                valid[r, : len(idx)] = True
                slot += T
            self.groups.append((causal_pairs(valid).to(device), len(rows), T))
            first = j
        self.gather = torch.tensor(gather, dtype=torch.long, device=device)
        self.back = torch.tensor(back, dtype=torch.long, device=device)
        self._order, self._own_from = order, own_froms

    @functools.cached_property
    def layout(self) -> ops.PackedLayout:
        """The same structure for the attention kernel (:func:`t1.model.kernels.ops.packed_attention`): each
        sequence's flat rows and the first of them it computes as a query (later than 0 when it reads
        another's prefix); sequences that share rows form one unit of the backward. Built at first use."""
        units: dict[int, list[int]] = {}
        for i in self._order:
            units.setdefault(self.index[i][0], []).append(i)
        return ops.PackedLayout(
            seq_ptr=torch.tensor([0, *itertools.accumulate(len(x) for x in self.index)], dtype=torch.int32),
            seq_idx=torch.tensor([f for x in self.index for f in x], dtype=torch.int32),
            own_from=torch.tensor(self._own_from, dtype=torch.int32),
            unit_ptr=torch.tensor([0, *itertools.accumulate(len(u) for u in units.values())], dtype=torch.int32),
            unit_seqs=torch.tensor([i for u in units.values() for i in u], dtype=torch.int32),
            max_len=self.max_len)

    def flat(self, i: int, t: int) -> int:
        """The flat position of token t of sequence i."""
        return self.index[i][t]


def packed_logits(w: Prepared, packed: Packed, select: torch.Tensor | None = None) -> torch.Tensor:
    """Logits [n, V] at every flat position of ``packed`` (or only at the flat positions ``select``) — the same
    function as :func:`forward_logits` on the padded batch, over weights ``w`` (a :class:`Prepared`).
    Runs under whatever autocast the caller set."""
    nq, nkv, hd = w.nq, w.nkv, w.hd
    g = nq // nkv
    groups: list = []  # the fallback's masks, built at its first call

    def grouped(qk, v):  # [n, nq + nkv, hd], [n, nkv, hd] -> [n, nq·hd]
        if not groups:
            groups.extend((_mask_bias(allowed, nq, w.dtype), b, T) for allowed, b, T in packed.groups)
        sizes = [b * T for _, b, T in groups]
        out = []
        for qk_g, v_g, (bias, b, T) in zip(qk.index_select(0, packed.gather).split(sizes),
                                          v.index_select(0, packed.gather).split(sizes), groups):
            q_g, k_g = qk_g.view(b, T, nq + nkv, hd).split([nq, nkv], dim=2)
            out.append(_attend(q_g, k_g, v_g.view(b, T, nkv, hd), bias, g).view(b * T, nq * hd))
        return (out[0] if len(out) == 1 else torch.cat(out)).index_select(0, packed.back)

    def attend(qk, v):
        return ops.packed_attention(qk, v, packed.layout, nq, grouped)

    rot = rope_table(w.inv_freq, packed.max_len)[packed.positions][:, None]  # [n, 1, hd/2]
    h = _layers(w, F.embedding(packed.ids, w.embed, w.padding_idx), rot, attend)
    if select is not None:
        h = h.index_select(0, select)
    return F.linear(ops.rms_norm_to(h, w.eps, w.dtype), w.lm_head, w.lm_head_b)
