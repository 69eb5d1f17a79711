"""The sampler check apart from the nucleus boundary (review D8): a token the sampler kept and the trainer's
top-p cut (its log-prob −inf, floored at −100) is counted as a nucleus disagreement, not as a log-prob gap of
≈ 98 in ``sampling/logp_diff_max``."""

import pytest
import torch

from t1.rl.batch import Mismatch
from t1.rl.summary import batch_stats, step_row
from t1.rollout.logprobs import processed_logp


class OneProcess:
    device = torch.device("cpu")

    def reduce(self, t, reduction="sum"):
        return t


def boundary_case():
    """Four positions; at the last the sampled token (id 2) sits just outside the trainer's 0.85 nucleus."""
    logits = torch.log(torch.tensor([[0.7, 0.2, 0.1]] * 4))
    targets = torch.tensor([0, 1, 0, 2])
    mine = processed_logp(logits, targets, 1.0, 0.85)
    assert torch.isinf(mine[3]) and bool(torch.isfinite(mine[:3]).all())  # the trainer's view: −inf
    sampled = mine.clone()
    sampled[:3] += torch.tensor([0.001, -0.003, 0.002])  # bf16-sized gaps inside both nuclei
    sampled[3] = -2.3  # the sampler's top-p kept it
    return logits, targets, sampled


def test_a_token_outside_the_trainers_nucleus_is_a_mismatch_not_a_gap():
    logits, targets, sampled = boundary_case()
    m = Mismatch(1.0, 0.85, cap=2.0)
    w = m(logits, targets, sampled)
    st = m.stats()
    assert st["logp_diff_max"] == pytest.approx(0.003, abs=1e-6)  # not ≈ 98
    assert st["logp_diff_sum"] == pytest.approx(0.006, abs=1e-6) and st["logp_diff_n"] == 3
    assert (st["nucleus_mismatch"], st["logp_tokens"]) == (1, 4)
    assert float(w[3]) < 1e-40  # its IS weight: e^(−100 + 2.3)
    upd = {"kl": 0.0, "entropy": 0.0, "tokens": 4.0, "selected": 1.0, "loss": 0.0, "grad_norm": 0.0, "lr": 0.0,
           "clip_fraction": 0.0, "skipped": False, **st}
    bad = {k: torch.zeros(1, dtype=torch.bool) for k in ("truncated", "repetitive", "garbage")}
    stats = batch_stats(torch.ones(1), torch.ones(1), bad, torch.tensor([4.0]), torch.tensor([True]), 1)
    row = step_row(OneProcess(), 0, stats, upd, 1.0, {}, 1, 2.0)
    assert row["sampling/logp_diff_max"] == pytest.approx(0.003, abs=1e-6)
    assert row["sampling/logp_diff_mean"] == pytest.approx(0.002, abs=1e-6)
    assert row["sampling/nucleus_mismatch"] == 0.25 and row["sampling/nucleus_mismatch_count"] == 1
    assert row["sampling/is_weight_mean"] == pytest.approx(float(w.sum()) / 4)


def test_a_sampler_that_reports_a_floor_is_a_mismatch_too():
    """The other direction (the engine's own floor, e.g. a token its top-p cut): also kept out of the gap."""
    logits, targets, sampled = boundary_case()
    sampled[3], targets[3] = -100.0, 1
    m = Mismatch(1.0, 0.85, cap=0)
    assert m(logits, targets, sampled) is None
    assert m.stats()["nucleus_mismatch"] == 1 and m.stats()["logp_diff_max"] < 0.01
