"""The T1 RL step as pure tensor functions. They never mutate their inputs, log, save or communicate.

Notation: N = P·K responses, stored group-major (responses i·K … i·K+K−1 answer prompt i); T = the longest
response in tokens; ``mask`` [N, T] marks real (non-padding) response tokens.

The step, for one batch (docs/method.md, "The RL step"):

1. r_i ∈ {0, 1} from the task; −1 instead for truncated / repetitive / garbage responses (:func:`penalize`).
2. d_i = Σ_t clamp(log π_θ − log π_ref, ±c) (:func:`sequence_kl`), centred within its group by the
   leave-one-out mean (:func:`center_in_group`), folded in: r'_i = r_i − β (d_i − d̄_{−i}) (:func:`shape`).
3. A_i = r'_i − mean_{j≠i} r'_j (RLOO, no std normalisation) (:func:`rloo`); every token of i gets A_i.
4. L = −agg(min(ρ A, clip(ρ, 1±ε) A)) − α · agg(H), ρ = π_θ / π_old (ρ ≡ 1 in value, but not in gradient,
   when the batch takes one optimizer step) (:func:`policy_loss`).
"""

from __future__ import annotations

from typing import Literal

import torch

Aggregation = Literal["seq_mean_token_mean", "token_mean"]


def penalize(reward: torch.Tensor, truncated: torch.Tensor, repetitive: torch.Tensor,
             garbage: torch.Tensor, penalty: float = -1.0) -> torch.Tensor:
    """[N] rewards with ``penalty`` wherever any of the [N] bool flags is set."""
    bad = truncated | repetitive | garbage
    return torch.where(bad, torch.full_like(reward, penalty), reward)


def sequence_kl(logp: torch.Tensor, ref_logp: torch.Tensor, mask: torch.Tensor,
                clamp: float = 0.5) -> torch.Tensor:
    """d_i = Σ_t clamp(logp − ref_logp, −clamp, clamp) over real tokens. [N, T] × 2, [N, T] -> [N]."""
    diff = (logp - ref_logp).clamp(-clamp, clamp) if clamp > 0 else logp - ref_logp
    return (diff * mask).sum(-1)


def loo_mean(x: torch.Tensor, group: int) -> torch.Tensor:
    """For each element, the mean of the *other* members of its group of ``group``. [N] -> [N]."""
    if group < 2:
        raise ValueError(f"leave-one-out needs groups of at least 2 (got {group})")
    g = x.view(-1, group)
    return ((g.sum(-1, keepdim=True) - g) / (group - 1)).reshape(-1)


def center_in_group(d: torch.Tensor, group: int) -> torch.Tensor:
    """d_i − mean_{j≠i} d_j within each group. [N] -> [N]."""
    return d - loo_mean(d, group)


def shape(reward: torch.Tensor, kl_centered: torch.Tensor, beta: float) -> torch.Tensor:
    """r'_i = r_i − β (d_i − d̄). [N] -> [N]."""
    return reward - beta * kl_centered


def rloo(reward: torch.Tensor, group: int) -> torch.Tensor:
    """A_i = r_i − mean_{j≠i} r_j within each group (REINFORCE leave-one-out). [N] -> [N].
    A group whose rewards are all equal gets A = 0."""
    return reward - loo_mean(reward, group)


def token_entropy(logits: torch.Tensor) -> torch.Tensor:
    """Entropy of the categorical distribution at each position, in nats. [..., V] -> [...]."""
    logp = torch.log_softmax(logits.float(), dim=-1)
    return -(logp.exp() * logp).sum(-1)


def aggregate(values: torch.Tensor, mask: torch.Tensor, mode: Aggregation, n_seqs: float | None = None,
              n_tokens: float | None = None) -> torch.Tensor:
    """Reduce [N, T] token values to a scalar.

    ``seq_mean_token_mean``: the mean over each sequence's real tokens, then the mean over sequences (the
    authors' choice). ``token_mean``: the mean over all real tokens. ``n_seqs`` / ``n_tokens`` replace the
    local denominators with global ones, so that shards of a batch (micro-batches, processes) sum to the
    value over the whole batch.
    """
    mask = mask.to(values.dtype)
    if mode == "seq_mean_token_mean":
        per_seq = (values * mask).sum(-1) / mask.sum(-1).clamp(min=1)
        return per_seq.sum() / (n_seqs if n_seqs is not None else values.shape[0])
    if mode == "token_mean":
        return (values * mask).sum() / (n_tokens if n_tokens is not None else mask.sum().clamp(min=1))
    raise ValueError(f"unknown aggregation {mode!r}")


def policy_loss(logp: torch.Tensor, old_logp: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor,
                mode: Aggregation, clip: float = 0.2, entropy: torch.Tensor | None = None, alpha: float = 0.0,
                n_seqs: float | None = None, n_tokens: float | None = None, weight: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, dict]:
    """The clipped policy-gradient loss with an entropy bonus.

    logp, old_logp: [N, T] log-probs of the sampled tokens under the current policy and the policy that
    sampled them (detached); advantages: [N]; entropy: [N, T] or None. Returns (loss, stats) where stats
    holds detached diagnostics (the clipped fraction). ``weight``: [N, T] detached per-token weights on the
    policy-gradient term (the truncated importance-sampling correction), or None.
    """
    ratio = torch.exp(logp - old_logp)
    adv = advantages[:, None].to(logp.dtype)
    unclipped = ratio * adv
    clipped = ratio.clamp(1 - clip, 1 + clip) * adv if clip > 0 else unclipped
    pg = -torch.minimum(unclipped, clipped)
    if weight is not None:
        pg = pg * weight.to(pg.dtype)
    loss = aggregate(pg, mask, mode, n_seqs, n_tokens)
    if entropy is not None and alpha:
        loss = loss - alpha * aggregate(entropy, mask, mode, n_seqs, n_tokens)
    with torch.no_grad():
        clip_frac = ((unclipped != clipped).to(logp.dtype) * mask).sum() / mask.sum().clamp(min=1)
    return loss, {"clip_fraction": clip_frac}


def gather_logp(logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """log softmax(logits)[token] at each position, computed in fp32. [N, T, V], [N, T] -> [N, T]."""
    logits = logits.float()
    return logits.gather(-1, tokens.unsqueeze(-1)).squeeze(-1) - torch.logsumexp(logits, dim=-1)
