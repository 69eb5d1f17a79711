"""A step's scored samples before they become the update's batch, and dynamic sampling over them (DAPO,
Yu et al. 2025: "over-sample and filter out prompts with the accuracy equal to 1 and 0").

``algo.dynamic_sampling``: a group whose K rewards are all equal has zero advantage (up to the KL term) and
teaches nothing, so `t1 rl` draws more prompts, round after round, until the step has P groups that carry a
signal or ``algo.dynamic_max_rounds`` rounds were drawn; a step still short is filled with dropped groups
(kept in order), so the batch always has P groups. The metrics count the rounds (``dynamic/rounds``), the
groups dropped (``dynamic/groups_dropped``) and the filler groups (``dynamic/groups_filled``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class Drawn:
    """Scored samples, grouped K at a time (group-major), one entry per sample in each list."""

    prompts: list[list[int]]  # prompt token ids
    samples: list  # the engine's samples (t1.rollout.base.Sample)
    items: list  # the data items (t1.tasks.base.Item)
    scores: list  # the task's verdicts (t1.tasks.base.Score)
    flags: list  # T1's penalty flags (t1.rl.penalties)
    correct: torch.Tensor  # [N] the task's 0/1
    bad: dict  # penalty name -> [N] bool
    reward: torch.Tensor  # [N] the reward trained on (after penalties and the soft overlong zone)
    soft: torch.Tensor  # [N] the soft overlong part of it
    named: object | None  # the user's rewards (t1.rl.rewards.Named) or None

    def take(self, idx: list[int]) -> Drawn:
        """The samples at ``idx``, in that order."""
        pick = lambda xs: [xs[i] for i in idx]  # noqa: E731
        return Drawn(pick(self.prompts), pick(self.samples), pick(self.items), pick(self.scores),
                     pick(self.flags), self.correct[idx], {k: v[idx] for k, v in self.bad.items()},
                     self.reward[idx], self.soft[idx], None if self.named is None else self.named.take(idx))

    @staticmethod
    def cat(parts: list[Drawn]) -> Drawn:
        first = parts[0]
        named = None if first.named is None else type(first.named).cat([p.named for p in parts])
        return Drawn(*([x for p in parts for x in getattr(p, f)] for f in ("prompts", "samples", "items",
                                                                           "scores", "flags")),
                     torch.cat([p.correct for p in parts]), {k: torch.cat([p.bad[k] for p in parts])
                                                             for k in first.bad},
                     torch.cat([p.reward for p in parts]), torch.cat([p.soft for p in parts]), named)


def split_groups(reward: torch.Tensor, group: int) -> tuple[list[int], list[int]]:
    """(groups whose rewards differ, groups whose rewards are all equal), as group indices. [N] -> lists."""
    g = reward.view(-1, group)
    uniform = (g == g[:, :1]).all(dim=1).tolist()
    return [i for i, u in enumerate(uniform) if not u], [i for i, u in enumerate(uniform) if u]


def choose(keep: list[int], spare: list[int], need: int) -> tuple[list[int], int, int]:
    """The ``need`` groups to train on: the first ones with a signal, then (when too few) the first dropped
    ones, in the order drawn. Returns (groups, dropped, filled): groups left out for carrying no signal,
    and dropped groups used to fill the batch."""
    take = keep[:need]
    filler = spare[: need - len(take)]
    groups = sorted(take + filler)
    return groups, len(spare) - len(filler), len(filler)


def stats(rounds: int, dropped: int, filled: int) -> dict:
    """Sums for the step's metrics row (``dynamic/…``, means over processes: t1.rl.summary.step_row)."""
    return {"dynamic_rounds": torch.tensor(float(rounds)), "dynamic_dropped": torch.tensor(float(dropped)),
            "dynamic_filled": torch.tensor(float(filled))}
