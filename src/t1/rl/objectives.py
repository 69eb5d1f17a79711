"""The policy objectives `algo.loss` selects: each a pure function with one signature, registered in
:data:`OBJECTIVES`, and :func:`policy_loss`, the one entry point the update calls (both schedules of
:mod:`t1.rl.step`). They never mutate their inputs, log, save or communicate.

An objective maps (log-probs, old log-probs, advantages, mask, :class:`Settings`) to per-token losses ℓ_{i,t}
[N, T] and the tokens its clip touched; :func:`policy_loss` weights ℓ by the truncated importance-sampling
weights w_{i,t} when given, reduces it with the objective's aggregation and subtracts the entropy bonus
α · agg(H) reduced the same way. Notation as in :mod:`t1.rl.algo`: ρ_{i,t} = π_θ / π_old per token, A_i the
sequence's advantage, |y_i| its response tokens, ε_low / ε_high the clip range, sg(·) stop-gradient.

With one optimizer step per sampled batch (T1's default) π_old is the current policy, so ρ ≡ 1 in value and
only the aggregation tells the objectives apart (t1 with ``seq_mean_token_mean`` = grpo = gspo; dapo and cispo
average over tokens; dr_grpo over a constant); the clips act with ``algo.updates_per_batch`` > 1.

| name | per-token loss | aggregation | default (ε_low, ε_high) | reference |
|---|---|---|---|---|
| t1 | PPO clip | ``algo.aggregation`` | (``algo.clip``, ``algo.clip``) | Hou et al. 2025 (T1) |
| grpo | PPO clip | mean over tokens, then sequences | (``algo.clip``, ``algo.clip``) | Shao et al. 2024 |
| dr_grpo | PPO clip | Σ over tokens / (N · max_new_tokens) | (``algo.clip``, ``algo.clip``) | Liu et al. 2025 |
| dapo | PPO clip, clip-higher | mean over the batch's tokens | (0.2, 0.28) | Yu et al. 2025 |
| gspo | sequence ratio, clipped | mean over tokens, then sequences | (3e-4, 4e-4) | Zheng et al. 2025 |
| cispo | −sg(clip(ρ)) · A · log π | mean over the batch's tokens | (1.0, 0.28): no lower bound | MiniMax 2025 |
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, NamedTuple

import torch

from t1.rl.algo import Aggregation, aggregate


@dataclass(frozen=True)
class Settings:
    """What an objective needs besides the tensors. ``n_seqs`` / ``n_tokens``: the whole batch's counts (over
    every micro-batch and process) so that shards sum to the batch's loss; ``max_new_tokens``: the budget the
    batch was sampled with (dr_grpo's constant); ``aggregation``: t1's own choice (``algo.aggregation``)."""

    clip_low: float = 0.2
    clip_high: float = 0.2
    aggregation: Aggregation = "seq_mean_token_mean"
    n_seqs: float | None = None
    n_tokens: float | None = None
    max_new_tokens: int = 1


class Tokens(NamedTuple):
    loss: torch.Tensor  # [N, T] per-token loss ℓ_{i,t}
    clipped: torch.Tensor  # [N, T] bool: the clip changed this token's term


def _ppo(logp, old_logp, adv, low: float, high: float) -> Tokens:
    """ℓ = −min(ρ A, clip(ρ, 1 − ε_low, 1 + ε_high) A) (a zero range: no clip)."""
    ratio = torch.exp(logp - old_logp)
    a = adv[:, None].to(logp.dtype)
    unclipped = ratio * a
    clipped = ratio.clamp(1 - low, 1 + high) * a if (low or high) else unclipped
    return Tokens(-torch.minimum(unclipped, clipped), unclipped != clipped)


def t1(logp, old_logp, adv, mask, s: Settings) -> Tokens:
    """T1 (Hou et al. 2025): ℓ_{i,t} = −min(ρ_{i,t} A_i, clip(ρ_{i,t}, 1 − ε_low, 1 + ε_high) A_i), reduced
    with ``algo.aggregation`` (default: (1/N) Σ_i (1/|y_i|) Σ_t ℓ_{i,t}, the authors' choice)."""
    return _ppo(logp, old_logp, adv, s.clip_low, s.clip_high)


def grpo(logp, old_logp, adv, mask, s: Settings) -> Tokens:
    """GRPO (Shao et al. 2024, DeepSeekMath): the PPO clip per token, L = (1/N) Σ_i (1/|y_i|) Σ_t ℓ_{i,t}."""
    return _ppo(logp, old_logp, adv, s.clip_low, s.clip_high)


def dr_grpo(logp, old_logp, adv, mask, s: Settings) -> Tokens:
    """Dr. GRPO (Liu et al. 2025, "Understanding R1-Zero-like training"): the PPO clip per token, summed
    over each sequence and divided by a constant, L = (1/N) Σ_i Σ_t ℓ_{i,t} / L_max with L_max the sampling
    budget — no length normalisation, so a long wrong answer is not penalised less per token."""
    return _ppo(logp, old_logp, adv, s.clip_low, s.clip_high)


def dapo(logp, old_logp, adv, mask, s: Settings) -> Tokens:
    """DAPO (Yu et al. 2025): the PPO clip with a higher upper bound (clip-higher: ε_low 0.2, ε_high 0.28,
    room for low-probability tokens to rise), averaged over every token of the batch,
    L = Σ_{i,t} ℓ_{i,t} / Σ_i |y_i| (token-level: long responses weigh by their length)."""
    return _ppo(logp, old_logp, adv, s.clip_low, s.clip_high)


def gspo(logp, old_logp, adv, mask, s: Settings) -> Tokens:
    """GSPO (Zheng et al. 2025): one importance ratio per sequence, the geometric mean of its tokens',
    s_i = exp((1/|y_i|) Σ_t (log π_θ − log π_old)), clipped at 1 ± (3e-4, 4e-4):
    L = −(1/N) Σ_i min(s_i A_i, clip(s_i, 1 − ε_low, 1 + ε_high) A_i). Per token (so that it aggregates as
    grpo does, and a per-token IS weight applies) s_{i,t} = sg(s_i) · π_θ(y_t) / sg(π_θ(y_t)): the same value
    and gradient, (1/|y_i|) Σ_t ∇ log π_θ(y_t) · s_i A_i where unclipped."""
    m = mask.to(logp.dtype)
    seq = ((logp - old_logp) * m).sum(-1) / m.sum(-1).clamp(min=1)  # log s_i
    log_ratio = (logp - logp.detach() + seq.detach()[:, None]).clamp(max=10.0)
    return _ppo(log_ratio, torch.zeros_like(log_ratio), adv, s.clip_low, s.clip_high)


def cispo(logp, old_logp, adv, mask, s: Settings) -> Tokens:
    """CISPO (MiniMax 2025, MiniMax-M1): REINFORCE with a clipped, stop-gradient importance weight, so that
    no token's gradient is dropped (PPO's clip zeroes it): ℓ_{i,t} = −sg(clip(ρ_{i,t}, 1 − ε_low,
    1 + ε_high)) A_i log π_θ(y_t), L = Σ_{i,t} ℓ / Σ_i |y_i|. The paper bounds the weight above only
    (ε_low 1.0: weights in [0, 1 + ε_high])."""
    ratio = torch.exp(logp - old_logp).detach()
    weight = ratio.clamp(1 - s.clip_low, 1 + s.clip_high)
    return Tokens(-weight * adv[:, None].to(logp.dtype) * logp, weight != ratio)


@dataclass(frozen=True)
class Objective:
    fn: Callable[..., Tokens]
    aggregation: str | None  # None: ``algo.aggregation``
    clip: tuple[float, float] | None  # the paper's (ε_low, ε_high); None: ``algo.clip`` both sides


OBJECTIVES: dict[str, Objective] = {
    "t1": Objective(t1, None, None),
    "grpo": Objective(grpo, "seq_mean_token_mean", None),
    "dr_grpo": Objective(dr_grpo, "seq_mean_token_sum_norm", None),
    "dapo": Objective(dapo, "token_mean", (0.2, 0.28)),
    "gspo": Objective(gspo, "seq_mean_token_mean", (3e-4, 4e-4)),
    "cispo": Objective(cispo, "token_mean", (1.0, 0.28)),
}


def clip_range(name: str, clip: float, clip_low: float | None, clip_high: float | None) -> tuple[float, float]:
    """(ε_low, ε_high) of objective ``name``: ``algo.clip_low`` / ``clip_high`` where set, else its paper's
    default, else ``algo.clip`` on both sides."""
    low, high = OBJECTIVES[name].clip or (clip, clip)
    return (low if clip_low is None else clip_low), (high if clip_high is None else clip_high)


def k3(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """Per-token KL(π_θ ‖ π_ref) estimate k3 = e^x − x − 1 with x = log π_ref − log π_θ (≥ 0, unbiased; GRPO's
    KL term, verl's ``low_var_kl``; x clamped to ±20 as there). [N, T] × 2 -> [N, T]."""
    x = (ref_logp - logp).clamp(-20.0, 20.0)
    return x.exp() - x - 1


def policy_loss(name: str, logp: torch.Tensor, old_logp: torch.Tensor, advantages: torch.Tensor,
                mask: torch.Tensor, s: Settings, entropy: torch.Tensor | None = None, alpha: float = 0.0,
                weight: torch.Tensor | None = None, ref_logp: torch.Tensor | None = None, beta: float = 0.0
                ) -> tuple[torch.Tensor, dict]:
    """The loss of objective ``name`` (:data:`OBJECTIVES`) with the entropy bonus and, when the KL is a loss
    term (``algo.kl_in: loss``), the KL to the anchor: agg(w · ℓ) − α · agg(H) + β · agg(k3).

    logp, old_logp: [N, T] log-probs of the sampled tokens under the current policy and the policy that sampled
    them (detached); advantages: [N]; mask: [N, T] real response tokens; entropy: [N, T] or None; weight:
    [N, T] detached truncated-IS weights w (:class:`t1.rl.batch.Mismatch`) or None; ref_logp: [N, T] the
    anchor's log-probs or None (T1 folds the KL into the reward instead). Returns (loss, stats) with the share
    of tokens the clip touched (``clip_fraction``)."""
    obj = OBJECTIVES[name]
    mode = obj.aggregation or s.aggregation
    per_token, clipped = obj.fn(logp, old_logp, advantages, mask, s)
    if weight is not None:
        per_token = per_token * weight.to(per_token.dtype)
    loss = aggregate(per_token, mask, mode, s.n_seqs, s.n_tokens, s.max_new_tokens)
    if entropy is not None and alpha:
        loss = loss - alpha * aggregate(entropy, mask, mode, s.n_seqs, s.n_tokens, s.max_new_tokens)
    if ref_logp is not None and beta:
        loss = loss + beta * aggregate(k3(logp, ref_logp), mask, mode, s.n_seqs, s.n_tokens, s.max_new_tokens)
    with torch.no_grad():
        clip_frac = (clipped.to(logp.dtype) * mask).sum() / mask.sum().clamp(min=1)
    return loss, {"clip_fraction": clip_frac}
