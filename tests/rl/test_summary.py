"""The RL step's metrics row: t1's names and, for the same quantities, TRL GRPOTrainer's, so runs of both chart
side by side; frac_reward_zero_std counts the groups whose K rewards are all equal (no gradient from them)."""

import math

import pytest
import torch

from t1.rl.summary import batch_stats, step_row


class OneProcess:
    device = torch.device("cpu")

    def reduce(self, t, reduction="sum"):
        return t


UPDATE = {"kl": torch.tensor(0.2), "entropy": torch.tensor(3.0), "tokens": torch.tensor(30.0),
          "selected": torch.tensor(6.0), "logp_diff_sum": 0.0, "logp_diff_n": 0.0, "is_weight_sum": 0.0,
          "is_clipped": 0.0, "logp_diff_max": 0.0, "loss": 0.1, "grad_norm": 1.0, "lr": 1e-5,
          "clip_fraction": 0.25, "skipped": False}


def test_trl_names_carry_the_same_numbers():
    reward = torch.tensor([1.0, 1.0, 1.0, 0.0, -1.0, 1.0])  # K = 3: group one all 1 (zero spread), group two mixed
    correct = (reward > 0).float()
    bad = {k: torch.zeros(6, dtype=torch.bool) for k in ("truncated", "repetitive", "garbage")}
    lengths = torch.tensor([10.0, 12.0, 14.0, 20.0, 40.0, 6.0])
    finished = torch.tensor([True, True, True, True, False, True])
    row = step_row(OneProcess(), 0, batch_stats(reward, correct, bad, lengths, finished, 3), UPDATE, 2.0, {}, 1, 0)
    assert row["reward"] == pytest.approx(0.5)
    assert row["reward_std"] == pytest.approx(float(reward.std()))  # unbiased, as TRL's
    assert row["frac_reward_zero_std"] == 0.5
    assert row["reward_group_std"] == pytest.approx(float(reward[3:].std(unbiased=False)) / 2)
    assert row["completions/mean_length"] == row["response_length"] == pytest.approx(102 / 6)
    assert (row["completions/min_length"], row["completions/max_length"]) == (6.0, 40.0)
    assert row["completions/clipped_ratio"] == row["truncation_rate"] == pytest.approx(1 / 6)
    assert row["completions/mean_terminated_length"] == pytest.approx(62 / 5)
    assert (row["completions/min_terminated_length"], row["completions/max_terminated_length"]) == (6.0, 20.0)
    assert row["learning_rate"] == row["lr"] and row["clip_ratio/region_mean"] == row["clip_fraction"]
    assert all(math.isfinite(v) for v in row.values() if isinstance(v, float))
