"""The T1 RL step as pure tensor functions. They never mutate their inputs, log, save or communicate.

Notation: N = P·K responses, stored group-major (responses i·K … i·K+K−1 answer prompt i); T = the longest
response in tokens; ``mask`` [N, T] marks real (non-padding) response tokens.

The step, for one batch (docs/method.md, "The RL step"):

1. r_i ∈ {0, 1} from the task; −1 instead for truncated / repetitive / garbage responses (:func:`penalize`).
2. d_i = Σ_t clamp(log π_θ − log π_ref, ±c) (:func:`sequence_kl`), centred within its group by the
   leave-one-out mean (:func:`center_in_group`), folded in: r'_i = r_i − β (d_i − d̄_{−i}) (:func:`shape`).
3. A_i = r'_i − mean_{j≠i} r'_j (RLOO, no std normalisation) (:func:`rloo`); every token of i gets A_i.
   ``algo.advantage`` may pick GRPO's group-normalised or Dr. GRPO's group-centred one instead
   (:data:`ADVANTAGES`).
4. L = −agg(min(ρ A, clip(ρ, 1±ε) A)) − α · agg(H), ρ = π_θ / π_old (ρ ≡ 1 in value, but not in gradient,
   when the batch takes one optimizer step) — T1's objective; ``algo.loss`` picks it or another
   (:mod:`t1.rl.objectives`), each reduced by :func:`aggregate`.
"""

from __future__ import annotations

from typing import Literal

import torch

Aggregation = Literal["seq_mean_token_mean", "token_mean", "seq_mean_token_sum_norm"]


def penalize(reward: torch.Tensor, truncated: torch.Tensor, repetitive: torch.Tensor,
             garbage: torch.Tensor, penalty: float = -1.0) -> torch.Tensor:
    """[N] rewards with ``penalty`` wherever any of the [N] bool flags is set."""
    bad = truncated | repetitive | garbage
    return torch.where(bad, torch.full_like(reward, penalty), reward)


def soft_overlong(lengths: torch.Tensor, budget: int, buffer: int, factor: float = 1.0) -> torch.Tensor:
    """DAPO's soft overlong punishment (Yu et al. 2025, eq. 13) for responses of ``lengths`` tokens sampled
    with ``budget`` new tokens: 0 up to budget − buffer, then falling linearly to −factor at the budget,
    −factor beyond it; all zeros when ``buffer`` is 0. [N] -> [N]."""
    if buffer <= 0:
        return torch.zeros_like(lengths, dtype=torch.float32)
    over = (lengths.float() - (budget - buffer)).clamp(min=0) / buffer
    return -factor * over.clamp(max=1.0)


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


def group_mean_advantage(reward: torch.Tensor, group: int) -> torch.Tensor:
    """A_i = r_i − mean_j r_j within each group, the sample itself included (Dr. GRPO: no std). [N] -> [N]."""
    g = reward.view(-1, group)
    return (g - g.mean(-1, keepdim=True)).reshape(-1)


def group_normalised_advantage(reward: torch.Tensor, group: int, eps: float = 1e-4) -> torch.Tensor:
    """A_i = (r_i − mean_j r_j) / (std_j r_j + eps) within each group (GRPO; the standard deviation with
    Bessel's correction and eps = 1e-4, as TRL). A group whose rewards are all equal gets A = 0. [N] -> [N]."""
    g = reward.view(-1, group)
    return ((g - g.mean(-1, keepdim=True)) / (g.std(-1, keepdim=True) + eps)).reshape(-1)


ADVANTAGES = {"rloo": rloo, "grpo": group_normalised_advantage, "dr_grpo": group_mean_advantage}


def token_entropy(logits: torch.Tensor) -> torch.Tensor:
    """Entropy of the categorical distribution at each position, in nats. [..., V] -> [...]."""
    logp = torch.log_softmax(logits.float(), dim=-1)
    return -(logp.exp() * logp).sum(-1)


def aggregate(values: torch.Tensor, mask: torch.Tensor, mode: Aggregation, n_seqs: float | None = None,
              n_tokens: float | None = None, max_len: int = 1) -> torch.Tensor:
    """Reduce [N, T] token values to a scalar.

    ``seq_mean_token_mean``: the mean over each sequence's real tokens, then the mean over sequences (the
    authors' choice). ``token_mean``: the mean over all real tokens. ``seq_mean_token_sum_norm`` (Dr. GRPO):
    each sequence's sum over its tokens divided by the constant ``max_len``, then the mean over sequences.
    ``n_seqs`` / ``n_tokens`` replace the local denominators with global ones, so that shards of a batch
    (micro-batches, processes) sum to the value over the whole batch.
    """
    mask = mask.to(values.dtype)
    if mode == "seq_mean_token_mean":
        per_seq = (values * mask).sum(-1) / mask.sum(-1).clamp(min=1)
        return per_seq.sum() / (n_seqs if n_seqs is not None else values.shape[0])
    if mode == "token_mean":
        return (values * mask).sum() / (n_tokens if n_tokens is not None else mask.sum().clamp(min=1))
    if mode == "seq_mean_token_sum_norm":
        return (values * mask).sum() / max_len / (n_seqs if n_seqs is not None else values.shape[0])
    raise ValueError(f"unknown aggregation {mode!r}")


def gather_logp(logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """log softmax(logits)[token] at each position, computed in fp32. [N, T, V], [N, T] -> [N, T]."""
    logits = logits.float()
    return logits.gather(-1, tokens.unsqueeze(-1)).squeeze(-1) - torch.logsumexp(logits, dim=-1)
