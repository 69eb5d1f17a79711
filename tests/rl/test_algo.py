"""The pure RL functions against hand-computed numbers and a slow reference loop."""

import math

import torch

from t1.rl import algo


def test_rloo_k4_by_hand():
    r = torch.tensor([1.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0])
    a = algo.rloo(r, 4)
    # group 1: 1 - (0+0+1)/3 = 2/3 ; 0 - (1+0+1)/3 = -2/3 ; group 2 all equal -> 0
    torch.testing.assert_close(a, torch.tensor([2 / 3, -2 / 3, -2 / 3, 2 / 3, 0, 0, 0, 0]))


def test_grpo_and_dr_grpo_advantages_by_hand():
    r = torch.tensor([1.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0, 1.0])
    # group 1: mean 0.5, unbiased std sqrt(1/3); group 2 all equal -> 0 under both
    torch.testing.assert_close(algo.group_mean_advantage(r, 4), torch.tensor([0.5, -0.5, -0.5, 0.5, 0, 0, 0, 0]))
    z = 0.5 / (math.sqrt(1 / 3) + 1e-4)
    torch.testing.assert_close(algo.group_normalised_advantage(r, 4), torch.tensor([z, -z, -z, z, 0, 0, 0, 0]))
    assert set(algo.ADVANTAGES) == {"rloo", "grpo", "dr_grpo"}
    # RLOO is the group-mean advantage scaled by K / (K − 1)
    torch.testing.assert_close(algo.rloo(r, 4), algo.group_mean_advantage(r, 4) * 4 / 3)


def test_soft_overlong_by_hand():
    lengths = torch.tensor([10, 12, 14, 16, 20])
    # budget 16, buffer 4: free up to 12, then −(len − 12) / 4 · factor, −factor at and past the budget
    torch.testing.assert_close(algo.soft_overlong(lengths, 16, 4, 0.5), torch.tensor([0, 0, -0.25, -0.5, -0.5]))
    assert not algo.soft_overlong(lengths, 16, 0).any()  # off


def test_kl_centering_and_shaping_by_hand():
    logp = torch.tensor([[-1.0, -2.0, -3.0], [-1.0, -1.0, 0.0]])
    ref = torch.tensor([[-1.5, -1.0, -3.0], [-0.2, -1.0, -9.0]])
    mask = torch.tensor([[True, True, True], [True, True, False]])
    d = algo.sequence_kl(logp, ref, mask, clamp=0.5)
    # row 0: clamp(0.5) + clamp(-1.0 -> -0.5) + 0 = 0 ; row 1: clamp(-0.8 -> -0.5) + 0 (third masked) = -0.5
    torch.testing.assert_close(d, torch.tensor([0.0, -0.5]))
    centred = algo.center_in_group(torch.tensor([1.0, 2.0, 3.0, 6.0]), 4)
    # 1 - (2+3+6)/3 = -8/3 ; 2 - 10/3 = -4/3 ; 3 - 3 = 0 ; 6 - 2 = 4
    torch.testing.assert_close(centred, torch.tensor([-8 / 3, -4 / 3, 0.0, 4.0]))
    shaped = algo.shape(torch.tensor([1.0, 0.0, 1.0, 0.0]), centred, beta=0.1)
    torch.testing.assert_close(shaped, torch.tensor([1 + 0.8 / 3, 0.4 / 3, 1.0, -0.4]))


def test_penalty_overrides_reward():
    r = torch.tensor([1.0, 0.0, 1.0, 1.0])
    out = algo.penalize(r, torch.tensor([True, False, False, False]), torch.tensor([False, False, True, False]),
                        torch.tensor([False, True, False, False]))
    torch.testing.assert_close(out, torch.tensor([-1.0, -1.0, -1.0, 1.0]))
    assert r.tolist() == [1.0, 0.0, 1.0, 1.0]  # inputs are never mutated


def test_entropy_of_known_distributions():
    uniform = torch.zeros(2, 3, 8)
    torch.testing.assert_close(algo.token_entropy(uniform), torch.full((2, 3), math.log(8)))
    p = torch.tensor([0.5, 0.25, 0.25])
    torch.testing.assert_close(algo.token_entropy(p.log()), torch.tensor(1.5 * math.log(2)))


def test_aggregation_modes():
    v = torch.tensor([[1.0, 3.0, 100.0], [2.0, 0.0, 0.0]])
    m = torch.tensor([[True, True, False], [True, False, False]])
    # per-sequence means 2 and 2 -> 2 ; all tokens (1 + 3 + 2) / 3 = 2
    torch.testing.assert_close(algo.aggregate(v, m, "seq_mean_token_mean"), torch.tensor(2.0))
    v2 = torch.tensor([[1.0, 5.0, 0.0], [2.0, 0.0, 0.0]])
    torch.testing.assert_close(algo.aggregate(v2, m, "seq_mean_token_mean"), torch.tensor(2.5))  # (3 + 2) / 2
    torch.testing.assert_close(algo.aggregate(v2, m, "token_mean"), torch.tensor(8 / 3))
    # shards with global denominators sum to the whole
    whole = algo.aggregate(v2, m, "token_mean")
    parts = sum(algo.aggregate(v2[i: i + 1], m[i: i + 1], "token_mean", n_tokens=3.0) for i in range(2))
    torch.testing.assert_close(parts, whole)
    # Dr. GRPO: each sequence's sum over a constant, then the mean over sequences: ((1 + 5) / 10 + 2 / 10) / 2
    torch.testing.assert_close(algo.aggregate(v2, m, "seq_mean_token_sum_norm", max_len=10), torch.tensor(0.4))
    parts = sum(algo.aggregate(v2[i: i + 1], m[i: i + 1], "seq_mean_token_sum_norm", n_seqs=2.0, max_len=10)
                for i in range(2))
    torch.testing.assert_close(parts, torch.tensor(0.4))


def test_gather_logp():
    logits = torch.tensor([[[0.0, math.log(3.0)]]])
    torch.testing.assert_close(algo.gather_logp(logits, torch.tensor([[1]])), torch.tensor([[math.log(0.75)]]))


def test_mismatch_measures_the_gap_and_truncates_importance_weights():
    from t1.rl.batch import Mismatch
    from t1.rollout.logprobs import processed_logp

    torch.manual_seed(0)
    logits, targets = torch.randn(6, 11), torch.tensor([0, 3, 5, 7, 9, 10])
    mine = processed_logp(logits, targets, 1.3, 1.0)
    assert torch.allclose(mine, torch.log_softmax(logits / 1.3, -1)[torch.arange(6), targets])
    sampled = mine + torch.tensor([0.0, 0.1, -0.2, 0.0, 1.5, -3.0])  # the sampler's view of the same tokens
    m = Mismatch(1.3, 1.0, cap=2.0)
    w = m(logits, targets, sampled)
    ratio = torch.exp(mine - sampled)
    assert torch.allclose(w, ratio.clamp(max=2.0))
    st = m.stats()
    assert abs(st["logp_diff_sum"] - 4.8) < 1e-5 and abs(st["logp_diff_max"] - 3.0) < 1e-5
    assert st["logp_diff_n"] == 6
    assert st["is_clipped"] == 1  # only the token the sampler found e^3 times less likely than the trainer
    assert Mismatch(1.3, 1.0, cap=0)(logits, targets, sampled) is None  # correction off: gap measured only


def test_processed_logp_renormalises_over_the_nucleus():
    from t1.rollout.logprobs import processed_logp

    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    got = processed_logp(logits.repeat(4, 1), torch.tensor([0, 1, 2, 3]), 1.0, 0.75)
    # the nucleus at 0.75 is {0.5, 0.3}; renormalised 0.625 / 0.375; the others are outside it
    assert torch.allclose(got[:2].exp(), torch.tensor([0.625, 0.375]))
    assert torch.isinf(got[2:]).all()
