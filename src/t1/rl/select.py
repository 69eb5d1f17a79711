"""Optional subset selection after oversampling: which sampled responses go into the loss.

Off by default (the paper trains on all K). ``drop_uniform_groups`` removes groups whose rewards are all
equal: their RLOO advantages are zero up to the small KL term, so they cost compute and teach little.
``max_per_group`` keeps at most M per group, alternating the highest- and lowest-reward samples so that
correct and wrong answers stay balanced. Advantages are always computed on the full group first.
"""

from __future__ import annotations

import torch


def select(reward: torch.Tensor, adv: torch.Tensor, group: int, cfg) -> list[int]:
    """Indices of the responses to train on. reward, adv: [N] with N = groups × group."""
    keep: list[int] = []
    for g in range(reward.numel() // group):
        idx = list(range(g * group, (g + 1) * group))
        r = reward[idx]
        if cfg.drop_uniform_groups and bool((r == r[0]).all()):
            continue
        if cfg.max_per_group and cfg.max_per_group < group:
            ranked = sorted(idx, key=lambda i: (-float(reward[i]), i))
            lo, hi, picked = 0, len(ranked) - 1, []
            while len(picked) < cfg.max_per_group:
                picked.append(ranked[lo])
                lo += 1
                if len(picked) < cfg.max_per_group:
                    picked.append(ranked[hi])
                    hi -= 1
            idx = sorted(picked)
        keep.extend(idx)
    return keep
