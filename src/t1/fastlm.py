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
- the fused ``rms_norm`` kernel; attention as ``baddbmm`` with an additive causal/padding bias.

The fast sampler (:mod:`t1.rollout.fast`) starts from the same rearranged weights (:class:`Prepared`).
It reads the parameters on every call (nothing to keep in sync), matches transformers' logits to 1e-5 in
fp32 (tested), and is used only where nothing wraps the forward: a single process. Under DDP / FSDP /
DeepSpeed the trainers call the wrapped model, whose forward arms the gradient all-reduce.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from t1.config import option

_FAMILY = {"llama", "qwen2", "mistral"}


def fast_forward_option():
    """The ``train.fast_forward`` field of `t1 sft` and `t1 rl`."""
    return option(True, "on one process, run Llama-family models through t1's own forward pass (fewer "
                        "element-wise passes; same function, tested)")


def llama_family(model) -> bool:
    """Llama-family shapes this module and the fast sampler compute: default RoPE, SiLU MLP, no sliding window
    (biases on any projection are fine)."""
    cfg = model.config
    rope = getattr(cfg, "rope_scaling", None) or {}
    rope_type = rope.get("rope_type", rope.get("type", "default")) if isinstance(rope, dict) else "default"
    return (cfg.model_type in _FAMILY and rope_type in (None, "default")
            and getattr(cfg, "hidden_act", "silu") == "silu" and not getattr(cfg, "sliding_window", None))


def supports(model) -> bool:
    """For training: the family above, without attention dropout (a training-time op this pass skips)."""
    return llama_family(model) and not getattr(model.config, "attention_dropout", 0.0)


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
    """The weights rearranged for :func:`forward_logits` (and, cast to its dtype, for the fast sampler in
    :mod:`t1.rollout.fast`), built from the parameters by differentiable ops
    (concatenation, row permutation, scaling, and the cast to the autocast dtype when autocast is on), so
    gradients reach the original parameters. Build once and reuse across the micro-batches of one step when
    all their losses go into a single backward, or for passes without gradients; otherwise let
    ``forward_logits`` build its own per call (a backward frees the graph it walks)."""

    def __init__(self, model, dtype: torch.dtype | None = None):
        """``dtype``: what the matrices are cast to; None = the autocast dtype when autocast is on, else none."""
        cfg, core = model.config, model.model
        self.nq = nq = cfg.num_attention_heads
        self.nkv = nkv = getattr(cfg, "num_key_value_heads", None) or nq
        self.hd = hd = getattr(cfg, "head_dim", None) or cfg.hidden_size // nq
        self.eps = cfg.rms_norm_eps
        device = core.embed_tokens.weight.device
        dt = dtype
        if dt is None and torch.is_autocast_enabled(device.type):
            dt = torch.get_autocast_dtype(device.type)

        def cast(t):
            return t if t is None or dt is None else t.to(dt)

        order, scale = _pair_order(hd, device), hd ** -0.5
        self.embed = core.embed_tokens.weight
        self.inv_freq = core.rotary_emb.inv_freq.to(device=device, dtype=torch.float32)
        self.layers = []
        for layer in core.layers:
            a, m = layer.self_attn, layer.mlp
            self.layers.append((
                layer.input_layernorm.weight,
                cast(torch.cat([_heads(a.q_proj.weight, nq, hd, order, scale), _heads(a.k_proj.weight, nkv, hd, order),
                                a.v_proj.weight])),
                cast(_cat(_heads(a.q_proj.bias, nq, hd, order, scale), _heads(a.k_proj.bias, nkv, hd, order),
                          a.v_proj.bias)),
                cast(a.o_proj.weight), cast(a.o_proj.bias),
                layer.post_attention_layernorm.weight,
                cast(torch.cat([m.gate_proj.weight, m.up_proj.weight])), cast(_cat(m.gate_proj.bias, m.up_proj.bias)),
                cast(m.down_proj.weight), cast(m.down_proj.bias),
            ))
        self.norm = core.norm.weight
        head = model.get_output_embeddings()
        self.lm_head, self.lm_head_b = cast(head.weight), cast(getattr(head, "bias", None))


def forward_logits(model, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                   prepared: Prepared | None = None) -> torch.Tensor:
    """Logits [B, T, V] of a right-padded batch, as ``model(input_ids, attention_mask).logits`` (positions
    0..T-1 for every row; pad keys masked). Runs under whatever autocast the caller set."""
    w = prepared if prepared is not None else Prepared(model)
    B, T = input_ids.shape
    nq, nkv, hd = w.nq, w.nkv, w.hd
    g = nq // nkv
    device = input_ids.device

    h = F.embedding(input_ids, w.embed)
    H = h.shape[-1]
    rot = rope_table(w.inv_freq, T)[:, None]  # [T, 1, hd/2]
    causal = torch.ones(T, T, dtype=torch.bool, device=device).tril()
    allowed = causal[None] if attention_mask is None else causal[None] & attention_mask.bool()[:, None, :]
    allowed = allowed | torch.eye(T, dtype=torch.bool, device=device)[None]  # a pad query sees itself: no NaN
    bias = torch.zeros(allowed.shape, device=device).masked_fill_(~allowed, float("-inf"))  # [B, T, T]
    bias = bias[:, None].expand(B, nq, T, T).reshape(B * nq, T, T)

    for ln1, qkv_w, qkv_b, o_w, o_b, ln2, gu_w, gu_b, down_w, down_b in w.layers:
        x = F.rms_norm(h, (H,), ln1, w.eps)
        qkv = F.linear(x, qkv_w, qkv_b).float()
        qk = torch.view_as_complex(qkv[..., : (nq + nkv) * hd].unflatten(-1, (nq + nkv, hd // 2, 2)))
        qk = torch.view_as_real(qk * rot).flatten(-2)  # RoPE on q and k at once: [B, T, nq + nkv, hd]
        q = qk[:, :, :nq].transpose(1, 2).reshape(B * nq, T, hd)
        k = qk[:, :, nq:].transpose(1, 2)  # [B, nkv, T, hd]
        v = qkv[..., (nq + nkv) * hd:].unflatten(-1, (nkv, hd)).transpose(1, 2)
        if g > 1:  # grouped-query attention: each k/v head serves g query heads
            k = k[:, :, None].expand(B, nkv, g, T, hd)
            v = v[:, :, None].expand(B, nkv, g, T, hd)
        k = k.reshape(B * nq, T, hd)
        v = v.reshape(B * nq, T, hd)
        probs = torch.softmax(torch.baddbmm(bias, q, k.transpose(1, 2)).float(), dim=-1)
        att = torch.bmm(probs.to(v.dtype) if torch.is_autocast_enabled() else probs, v)
        att = att.view(B, nq, T, hd).transpose(1, 2).reshape(B, T, nq * hd)
        h = h + F.linear(att, o_w, o_b)
        gate, up = F.linear(F.rms_norm(h, (H,), ln2, w.eps), gu_w, gu_b).chunk(2, dim=-1)
        h = h + F.linear(F.silu(gate) * up, down_w, down_b)
    return F.linear(F.rms_norm(h, (H,), w.norm, w.eps), w.lm_head, w.lm_head_b)
