"""One RL step's batch as the update sees it: sequences grouped K at a time, their padded and packed
layouts, and how far the sampler's log-probs are from the trainer's for the same tokens."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from t1.batching import collate
from t1.data.sft import Example
from t1.model.forward import Packed
from t1.rollout.base import SamplingParams
from t1.rollout.logprobs import processed_logp


@dataclass
class Batch:
    """One process's share of a step: sequences (prompt + response), grouped ``group`` (K) at a time, with the
    sampling parameters they were drawn with — what the update needs to know about how the batch was made."""

    ids: list[list[int]]  # prompt + response tokens
    n_prompt: list[int]
    reward: torch.Tensor  # [N] after penalties
    stats: dict
    group: int  # K: samples per prompt, consecutive
    params: SamplingParams  # temperature, top-p, budget
    is_cap: float  # the truncated-IS correction's cap for this batch's sampler log-probs (0: off)
    sampler_logp: list[list[float] | None] | None = None  # per sequence, its response tokens' log-probs


def pad(batch: Batch, rows: list[int], pad_id: int, device):
    """Right-padded ids [B, T] and the response mask for positions 1..T-1 (token t is predicted at t-1), via
    SFT's collate: an RL sequence is an SFT example whose prompt carries no loss."""
    ids, attn, resp = collate([Example(tuple(batch.ids[i]), batch.n_prompt[i]) for i in rows], pad_id, device)
    return ids, attn, resp[:, 1:]


class PackedRows:
    """Rows of a batch laid end to end for :func:`t1.model.forward.packed_logits` (no padding; each prompt's tokens
    once for its K samples), with the flat positions whose next token is a response token (``select``),
    those tokens (``targets``), and ``spread`` to put per-position values into the right-padded [rows, T-1]
    layout that ``pad``'s mask and the loss use."""

    def __init__(self, batch: Batch, rows: list[int], device):
        seqs = [batch.ids[i] for i in rows]
        self.packed = Packed(seqs, device, prefixes=[batch.n_prompt[i] for i in rows])
        sel, targets, dest_r, dest_c = [], [], [], []
        for r, (i, seq) in enumerate(zip(rows, seqs)):
            cols = range(batch.n_prompt[i] - 1, len(seq) - 1)  # position t predicts token t + 1
            sel.extend(self.packed.index[r][t] for t in cols)
            targets.extend(seq[t + 1] for t in cols)
            dest_r.extend([r] * len(cols))
            dest_c.extend(cols)
        self.select = torch.tensor(sel, dtype=torch.long, device=device)
        self.targets = torch.tensor(targets, dtype=torch.long, device=device)
        self.dest = (torch.tensor(dest_r, dtype=torch.long, device=device),
                     torch.tensor(dest_c, dtype=torch.long, device=device))
        self.shape = (len(rows), max(len(s) for s in seqs) - 1)
        self.mask = torch.zeros(self.shape, dtype=torch.bool, device=device).index_put_(
            self.dest, torch.ones(len(sel), dtype=torch.bool, device=device))

    def spread(self, values: torch.Tensor) -> torch.Tensor:
        return torch.zeros(self.shape, dtype=values.dtype, device=values.device).index_put(self.dest, values)


def sampler_logp(batch: Batch, rows: list[int]) -> torch.Tensor | None:
    """The sampler's log-probs of ``rows``' response tokens laid end to end in row order (the order of
    ``PackedRows.targets`` and of a padded batch's ``logits[mask]``); None where the engine gave none."""
    if batch.sampler_logp is None or any(batch.sampler_logp[i] is None for i in rows):
        return None
    return torch.tensor([x for i in rows for x in batch.sampler_logp[i]], dtype=torch.float32)


class Mismatch:
    """Sampler vs trainer: |log π_sampler − log π_trainer| per response token, both under the distribution
    sampled from (temperature, top-p), summed, counted and maxed over a step (``sampling/logp_diff_*``) over
    the tokens inside both nuclei; the tokens one side keeps and the other cuts are counted apart
    (``sampling/nucleus_mismatch``). Why apart: with bf16 logits on both sides and different top-p kernels
    (vLLM's pivot-based one on GPUs), a token within rounding of the top-p boundary falls outside the trainer's
    nucleus a few times per million tokens; its log-prob there is −inf (:attr:`FLOOR`), and one such token
    would put ≈ 98 into a max meant to read the gap of rounding (≲ 1e-2) or of a stale engine (≫ 1e-2). With
    ``cap`` > 0, truncated importance-sampling weights min(π_trainer / π_sampler, cap) per token (a token
    outside the trainer's nucleus gets ≈ 0)."""

    FLOOR = -100.0  # a token outside the trainer's nucleus has log-prob −inf; counted as this

    def __init__(self, temperature: float, top_p: float, cap: float):
        self.temperature, self.top_p, self.cap = temperature, top_p, cap
        self.diff_sum, self.diff_max, self.n = 0.0, 0.0, 0
        self.outside, self.tokens = 0, 0
        self.weight_sum, self.clipped = 0.0, 0

    def __call__(self, logits: torch.Tensor, targets: torch.Tensor, sampled: torch.Tensor | None
                 ) -> torch.Tensor | None:
        """``logits`` [n, V] at the positions predicting ``targets`` [n]; ``sampled`` [n] or None. Returns the
        per-token IS weights [n] (None when the correction is off or the engine gave no log-probs)."""
        if sampled is None or targets.numel() == 0:
            return None
        mine = processed_logp(logits.detach(), targets, self.temperature, self.top_p).clamp(min=self.FLOOR)
        sampled = sampled.to(mine.device)
        delta = mine - sampled
        inside = (mine > self.FLOOR) & (sampled > self.FLOOR)  # both nuclei hold the token
        gap = delta[inside].abs()
        self.diff_sum += float(gap.sum())
        self.diff_max = max(self.diff_max, float(gap.max())) if gap.numel() else self.diff_max
        self.n += gap.numel()
        self.outside += int((~inside).sum())
        self.tokens += delta.numel()
        if not self.cap:
            return None
        ratio = delta.exp()
        self.clipped += int((ratio > self.cap).sum())
        weight = ratio.clamp(max=self.cap)
        self.weight_sum += float(weight.sum())
        return weight

    def stats(self) -> dict:
        return {"logp_diff_sum": self.diff_sum, "logp_diff_max": self.diff_max, "logp_diff_n": float(self.n),
                "nucleus_mismatch": float(self.outside), "logp_tokens": float(self.tokens),
                "is_weight_sum": self.weight_sum, "is_clipped": float(self.clipped)}
