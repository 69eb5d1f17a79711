"""Log-probs of given tokens under the distribution an engine samples from: softmax(logits / T), cut to the
top-p nucleus and renormalised — what the fast engine returns and what vLLM returns with
``logprobs_mode=processed_logprobs``. The trainer computes these from its own logits to measure how far the
sampler is from it (``sampling/logp_diff_*``) and for the truncated importance-sampling correction."""

from __future__ import annotations

import torch

MISMATCH_ROWS = 256  # positions per call of the sampler check: its top-p sort holds ~41 bytes per logit


@torch.no_grad()
def processed_logp(logits: torch.Tensor, targets: torch.Tensor, temperature: float, top_p: float,
                   chunk: int = 1024) -> torch.Tensor:
    """[N, V] logits, [N] token ids -> [N] fp32 log-probs (−inf for a token outside the nucleus). Rows are
    processed ``chunk`` at a time so the sort never holds more than chunk × V values."""
    if temperature <= 0:
        return torch.zeros(targets.shape, dtype=torch.float32, device=logits.device)
    out = []
    for s in range(0, logits.shape[0], chunk):
        x = logits[s: s + chunk].float()
        x = x if temperature == 1.0 else x / temperature
        logp = torch.log_softmax(x, dim=-1)
        t = targets[s: s + chunk].unsqueeze(-1)
        lp = logp.gather(-1, t).squeeze(-1)
        if top_p < 1.0:
            sorted_lp, _ = logp.sort(dim=-1, descending=True)
            p = sorted_lp.exp()
            cum = p.cumsum(-1)
            keep = (cum - p) <= top_p  # the smallest prefix with mass ≥ top_p (the fast engine's rule)
            mass = (p * keep).sum(-1)
            threshold = sorted_lp.masked_fill(~keep, float("inf")).min(-1).values
            lp = torch.where(lp >= threshold, lp - mass.log(), torch.full_like(lp, float("-inf")))
        out.append(lp)
    return torch.cat(out) if out else torch.zeros(0, device=logits.device)
