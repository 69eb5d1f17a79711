"""Batching shared by every trainer: the seeded epoch order, length-bucketed micro-batches and collation."""

from __future__ import annotations

import torch


def epoch_order(n: int, seed: int, epoch: int) -> list[int]:
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(n, generator=g).tolist()


def micro_batches(batch: list[int], lengths: list[int], token_budget: int, world: int,
                  ratio: float = 0.0) -> list[list[int]]:
    """Split a global batch into length-sorted micro-batches of ≤ token_budget padded tokens whose shortest
    example is ≥ ratio × their longest, as many as a multiple of ``world`` (splitting the largest, or adding
    empty ones) so every process runs the same count."""
    order = sorted(batch, key=lambda i: (-lengths[i], i))
    mbs: list[list[int]] = []
    for i in order:
        width = lengths[mbs[-1][0]] if mbs else 0
        if mbs and (len(mbs[-1]) + 1) * width <= token_budget and lengths[i] >= ratio * width:
            mbs[-1].append(i)
        else:
            mbs.append([i])
    while len(mbs) % world:
        biggest = max(range(len(mbs)), key=lambda k: len(mbs[k]))
        if len(mbs[biggest]) < 2:
            mbs.append([])
            continue
        mb = mbs.pop(biggest)
        mbs[biggest:biggest] = [mb[: len(mb) // 2], mb[len(mb) // 2:]]
    return mbs


def collate(examples: list, pad_id: int, device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Right-padded (input_ids, attention_mask, loss_mask), each [B, T]; loss_mask marks response tokens."""
    width = max(len(e.ids) for e in examples)
    ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    attn = torch.zeros((len(examples), width), dtype=torch.long)
    loss = torch.zeros((len(examples), width), dtype=torch.bool)
    for row, e in enumerate(examples):
        ids[row, : len(e.ids)] = torch.tensor(e.ids)
        attn[row, : len(e.ids)] = 1
        loss[row, e.n_prompt: len(e.ids)] = True
    return ids.to(device), attn.to(device), loss.to(device)
