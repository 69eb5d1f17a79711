"""The attention-mask rule every t1 pass shares (the training forward over padded or packed batches, the
decode step's prefill): a query attends to earlier positions that hold real tokens, and to itself.

The "itself" is for pad queries: a left-pad (or right-pad) position sees no real key at or before it, so
with only the causal and padding rule its softmax row would be all -inf and come out NaN. Letting every
query see itself keeps each row finite; a pad query's output is never read, and a real query sees itself
anyway, so nothing real changes.
"""

from __future__ import annotations

import torch


def causal_pairs(valid: torch.Tensor) -> torch.Tensor:
    """[B, T] which positions hold real tokens -> [B, T, T] allowed (query, key) pairs: causal, real keys."""
    T = valid.shape[-1]
    return torch.ones(T, T, dtype=torch.bool, device=valid.device).tril()[None] & valid[:, None, :]


def mask_bias(allowed: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """[B, T, T] allowed (query, key) pairs -> [B, T, T] additive bias (0 / -inf) in ``dtype``, every query
    also allowed to see itself (so a pad query gets no NaN; see the module doc)."""
    T = allowed.shape[-1]
    allowed = allowed | torch.eye(T, dtype=torch.bool, device=allowed.device)[None]
    return torch.zeros(allowed.shape, dtype=dtype, device=allowed.device).masked_fill_(~allowed, float("-inf"))
