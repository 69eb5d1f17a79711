"""Log-probs of the sampled tokens and the entropy at each position, a chunk of positions at a time.

:func:`t1.rl.algo.gather_logp` and :func:`t1.rl.algo.token_entropy` on [tokens, V] logits make autograd keep
fp32 copies of the whole micro-batch's logits (the fp32 cast, the log-softmax and its exp: ~22 bytes per
logit with the gradient — 35 GiB for one 11k-token sequence over Qwen's 152k vocabulary). :func:`logp_entropy`
computes the same two values and gradients with a custom autograd function that saves only its input (the
logits, in their own dtype, bf16 under autocast) and works ``chunk`` positions at a time in fp32 in both the
forward and the backward (which recomputes the softmax): the extra memory is two fp32 [chunk, V] buffers
(8 bytes per logit of a chunk, measured), plus the logits' gradient in their dtype — or nothing more with
``grad_in_place``, which writes each chunk's gradient over the saved logits once it has read them (for logits
that nothing else reads in the backward, e.g. an output layer's; were another autograd node to need them,
its backward would fail on the version check, not compute silently wrong). Same values and gradients as the
unchunked functions (tested in fp64 and fp32, entropy gradient included); the backward sums both terms'
gradients in fp32 before the single cast to the logits' dtype (the unchunked path casts each separately).

Pass logits that are contiguous (a model's output as it comes: ``[B, T, V]`` or ``[n, V]``) and targets of
the same leading shape; to take "position t predicts token t + 1" without slicing the logits (a slice of the
time axis is not a view of rows, so it would be copied), pad the targets with any token at the last position
and drop that column of the results (:func:`shifted`): its gradient is exactly zero.
"""

from __future__ import annotations

import torch
from torch.autograd.function import once_differentiable

from t1.rollout.logprobs import MISMATCH_ROWS


def _chunk_stats(x: torch.Tensor, t: torch.Tensor, entropy: bool):
    """(log p(target), entropy or None, log-probs of every token, probabilities or None) of one chunk of
    logits ``x`` [c, V] and targets ``t`` [c], in fp32 (fp64 for fp64 logits): two [c, V] buffers at most,
    everything else in place."""
    dt = torch.promote_types(x.dtype, torch.float32)
    logp_all = x.to(dt) if x.dtype != dt else x.clone()
    logp_all -= logp_all.amax(-1, keepdim=True)
    p = logp_all.exp()
    total = p.sum(-1, keepdim=True)
    logp_all -= total.log()
    lp = logp_all.gather(-1, t.unsqueeze(-1)).squeeze(-1)
    if not entropy:
        return lp, None, logp_all, None
    p /= total
    h = -torch.bmm(p.unsqueeze(1), logp_all.unsqueeze(-1)).view(-1)  # Σ p log p without a [c, V] product
    return lp, h, logp_all, p


class _LogpEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits: torch.Tensor, targets: torch.Tensor, chunk: int, entropy: bool, in_place: bool):
        n = logits.shape[0]
        dt = torch.promote_types(logits.dtype, torch.float32)
        logp = torch.empty(n, dtype=dt, device=logits.device)
        ent = torch.empty(n, dtype=dt, device=logits.device) if entropy else None
        for s in range(0, n, chunk):
            lp, h = _chunk_stats(logits[s: s + chunk], targets[s: s + chunk], entropy)[:2]  # [c, V] freed
            logp[s: s + chunk] = lp
            if entropy:
                ent[s: s + chunk] = h
        ctx.save_for_backward(logits, targets)
        ctx.chunk, ctx.entropy, ctx.in_place = chunk, entropy, in_place
        ctx.set_materialize_grads(False)
        return (logp, ent) if entropy else logp

    @staticmethod
    @once_differentiable
    def backward(ctx, g_logp, g_ent=None):
        """d log p(t)/dx_j = [j = t] − p_j;  dH/dx_j = −p_j (log p_j + H), per row, recomputed per chunk."""
        logits, targets = ctx.saved_tensors
        if g_logp is None and g_ent is None:
            return None, None, None, None, None
        grad = logits if ctx.in_place else torch.empty_like(logits)
        for s in range(0, logits.shape[0], ctx.chunk):
            e = s + ctx.chunk
            _, h, logp_all, p = _chunk_stats(logits[s:e], targets[s:e], True)
            if g_ent is not None:  # −p (log p + H) · g_H, in place on log p
                g = logp_all.add_(h.unsqueeze(-1)).mul_(p).mul_(-g_ent[s:e].to(p.dtype).unsqueeze(-1))
            else:
                g = logp_all.zero_()
            if g_logp is not None:  # + ([j = t] − p) · g_logp
                gl = g_logp[s:e].to(p.dtype).unsqueeze(-1)
                g.sub_(p.mul_(gl)).scatter_add_(-1, targets[s:e].unsqueeze(-1), gl)
            grad[s:e] = g
            del g, logp_all, p  # before the next chunk's
        return grad, None, None, None, None


def logp_entropy(logits: torch.Tensor, targets: torch.Tensor, chunk: int = 0, entropy: bool = True,
                 grad_in_place: bool = False):
    """(log softmax(logits)[target], entropy in nats or None), each of the targets' shape, in fp32 (fp64 for
    fp64 logits), for logits [..., V] and targets [...]; ``chunk`` positions at a time (0: all at once).
    Differentiable in both; ``grad_in_place``: the backward overwrites the logits with their gradient (see
    the module doc)."""
    V = logits.shape[-1]
    lead = targets.shape
    flat, t = logits.reshape(-1, V), targets.reshape(-1)
    if flat.shape[0] != t.shape[0]:
        raise ValueError(f"logits {tuple(logits.shape)} and targets {tuple(lead)} disagree")
    chunk = chunk if chunk > 0 else max(1, flat.shape[0])
    out = _LogpEntropy.apply(flat, t, chunk, entropy, grad_in_place and flat.requires_grad)
    if entropy:
        return out[0].view(lead), out[1].view(lead)
    return out.view(lead), None


def shifted(logits: torch.Tensor, ids: torch.Tensor, chunk: int = 0, entropy: bool = True,
            grad_in_place: bool = False):
    """For a padded batch: log-probs [B, T-1] of ids[:, 1:] under logits[:, :-1] (and the entropies there),
    from the whole [B, T, V] logits without copying them (see the module doc)."""
    targets = torch.cat([ids[:, 1:], ids[:, :1]], dim=1)  # the last column: any token, dropped below
    logp, h = logp_entropy(logits, targets, chunk, entropy, grad_in_place)
    return logp[:, :-1], (h[:, :-1] if h is not None else None)




def mismatch_rows(mismatch, logits: torch.Tensor, targets: torch.Tensor, sampled: torch.Tensor | None,
                  rows: int = MISMATCH_ROWS) -> torch.Tensor | None:
    """``mismatch`` (a :class:`t1.rl.batch.Mismatch`) on logits [n, V] and targets [n], ``rows`` positions per
    call (views of the logits), so its temporaries stay within rows × V × ~41 bytes (measured, top-p < 1).
    Returns the IS weights [n] or None."""
    if sampled is None or targets.numel() == 0:
        return None
    out = [mismatch(logits[s: s + rows], targets[s: s + rows], sampled[s: s + rows])
           for s in range(0, targets.shape[0], rows)]
    return None if any(w is None for w in out) else torch.cat(out)


def padded_mismatch(mismatch, logits: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor,
                    sampled: torch.Tensor | None) -> torch.Tensor | None:
    """:func:`mismatch_rows` over the masked positions of a padded batch, row by row: logits [B, ≥T, V]
    (position t predicts targets[:, t]), targets and mask [B, T], the sampler's log-probs of the masked
    positions in row order. A row's response positions are one run, so each call reads a view of the logits
    (``logits[mask]`` would copy all of them). Returns the IS weights of the masked positions in row order,
    or None."""
    if sampled is None:
        return None
    counts = mask.sum(-1).tolist()
    out = []
    for r, part in enumerate(sampled.split(counts)):
        cols = mask[r].nonzero().squeeze(-1)
        if not len(cols):
            continue
        a, b = int(cols[0]), int(cols[-1]) + 1
        x, t = (logits[r, a:b], targets[r, a:b]) if b - a == len(cols) else (logits[r, cols], targets[r, cols])
        out.append(mismatch_rows(mismatch, x, t, part))
    if not out or any(w is None for w in out):
        return None
    return torch.cat(out)


def row_weights(weights: list, rows: list[int], mask: torch.Tensor) -> torch.Tensor | None:
    """Per-sequence token weights (truncated IS) laid into the padded [rows, T] layout; None when off."""
    if all(weights[i] is None for i in rows):
        return None
    out = torch.ones(mask.shape, device=mask.device)
    for r, i in enumerate(rows):
        if weights[i] is not None:
            out[r][mask[r]] = weights[i].to(mask.device)
    return out
