"""Each objective of ``algo.loss`` (t1.rl.objectives) against a slow reference loop written from its paper's
formula, and its gradient against hand-computed values."""

import math

import pytest
import torch

from t1.rl.objectives import OBJECTIVES, Settings, clip_range, k3, policy_loss

SEQ_MEAN, TOKEN_MEAN, SUM_NORM = ("t1", "grpo", "gspo"), ("dapo", "cispo"), ("dr_grpo",)


def _clip(x, low, high):
    return min(max(x, 1 - low), 1 + high)


def _slow(name, logp, old, adv, mask, low, high, ent, alpha, budget):
    """The objective as plain Python loops: per-token terms, reduced as its paper says."""
    per_seq, ent_seq = [], []
    for i in range(len(logp)):
        toks = [t for t in range(len(logp[i])) if mask[i][t]]
        if name == "gspo":  # one ratio per sequence: the geometric mean of its tokens'
            s = math.exp(sum(logp[i][t] - old[i][t] for t in toks) / len(toks))
            vals = [-min(s * adv[i], _clip(s, low, high) * adv[i])] * len(toks)
        elif name == "cispo":  # REINFORCE with the clipped ratio as a weight
            vals = [-_clip(math.exp(logp[i][t] - old[i][t]), low, high) * adv[i] * logp[i][t] for t in toks]
        else:  # the PPO clip
            vals = []
            for t in toks:
                r = math.exp(logp[i][t] - old[i][t])
                vals.append(-min(r * adv[i], _clip(r, low, high) * adv[i]))
        per_seq.append(vals)
        ent_seq.append([float(ent[i][t]) for t in toks])

    def reduce(rows):
        if name in SEQ_MEAN:
            return sum(sum(v) / len(v) for v in rows) / len(rows)
        if name in SUM_NORM:
            return sum(sum(v) / budget for v in rows) / len(rows)
        return sum(sum(v) for v in rows) / sum(len(v) for v in rows)

    return reduce(per_seq) - alpha * reduce(ent_seq)


@pytest.mark.parametrize("name", list(OBJECTIVES))
def test_each_objective_matches_its_formula(name):
    g = torch.Generator().manual_seed(0)
    logp = -torch.rand(6, 5, generator=g) * 3
    scale = 0.8 if name != "gspo" else 0.002  # ratios inside and outside each objective's clip range
    old = logp + (torch.rand(6, 5, generator=g) - 0.5) * scale
    adv = torch.randn(6, generator=g)
    mask = torch.rand(6, 5, generator=g) > 0.3
    mask[:, 0] = True
    ent = torch.rand(6, 5, generator=g)
    low, high = clip_range(name, 0.2, None, None)
    s = Settings(low, high, "seq_mean_token_mean", max_new_tokens=9)
    loss, stats = policy_loss(name, logp, old, adv, mask, s, ent, 0.05)
    slow = _slow(name, logp.tolist(), old.tolist(), adv.tolist(), mask.tolist(), low, high, ent, 0.05, 9)
    assert loss.item() == pytest.approx(slow, rel=1e-5)
    assert 0 < stats["clip_fraction"] < 1, name  # the example reaches every objective's clip


def test_t1_follows_algo_aggregation_and_the_paper_clips_are_the_defaults():
    assert clip_range("t1", 0.3, None, None) == (0.3, 0.3) == clip_range("grpo", 0.3, None, None)
    assert clip_range("dapo", 0.3, None, None) == (0.2, 0.28)
    assert clip_range("gspo", 0.3, None, None) == (3e-4, 4e-4)
    assert clip_range("cispo", 0.3, None, None) == (1.0, 0.28)
    assert clip_range("dapo", 0.3, 0.1, None) == (0.1, 0.28)  # a field that is set wins
    logp, mask = torch.tensor([[-1.0, -2.0, -3.0], [-1.0, 0.0, 0.0]]), torch.tensor([[1, 1, 1], [1, 0, 0]]).bool()
    adv = torch.tensor([1.0, -1.0])
    seq = policy_loss("t1", logp, logp, adv, mask, Settings(aggregation="seq_mean_token_mean"))[0]
    tok = policy_loss("t1", logp, logp, adv, mask, Settings(aggregation="token_mean"))[0]
    assert seq.item() == pytest.approx(0.0) and tok.item() == pytest.approx(-2 / 4)  # (−1 −1 −1 + 1) / 4


def _grad(name, logp0, old, adv, mask, **kw):
    logp = logp0.clone().requires_grad_(True)
    low, high = clip_range(name, 0.2, None, None)
    loss, _ = policy_loss(name, logp, old, adv, mask, Settings(low, high, max_new_tokens=4, **kw))
    loss.backward()
    return logp.grad


def test_on_policy_gradients_by_hand():
    """Ratio 1 (one update per batch): −A_i ∇log π per token, divided by what each objective averages over."""
    logp = torch.tensor([[-1.0, -2.0, -0.5], [-0.5, -0.3, 0.0]])
    mask = torch.tensor([[True, True, True], [True, True, False]])
    adv = torch.tensor([3.0, -1.0])
    per_seq = torch.tensor([[-3 / 3, -3 / 3, -3 / 3], [1 / 2, 1 / 2, 0.0]]) / 2  # 1 / (N |y_i|)
    for name in SEQ_MEAN:
        torch.testing.assert_close(_grad(name, logp, logp, adv, mask), per_seq, msg=name)
    per_token = torch.tensor([[-3.0, -3.0, -3.0], [1.0, 1.0, 0.0]]) / 5  # 1 / Σ|y|
    for name in TOKEN_MEAN:
        torch.testing.assert_close(_grad(name, logp, logp, adv, mask), per_token, msg=name)
    per_budget = torch.tensor([[-3.0, -3.0, -3.0], [1.0, 1.0, 0.0]]) / (2 * 4)  # 1 / (N · max_new_tokens)
    torch.testing.assert_close(_grad("dr_grpo", logp, logp, adv, mask), per_budget)


def test_off_policy_clips_by_hand():
    """A token whose ratio left the range: PPO's clip drops its gradient, CISPO keeps it at the clipped
    weight; GSPO clips the whole sequence by its geometric-mean ratio."""
    logp = torch.tensor([[math.log(2.0), 0.0]]) - 1.0  # ratios 2 and 1 against old = −1
    old, mask, adv = torch.full((1, 2), -1.0), torch.ones(1, 2, dtype=torch.bool), torch.tensor([1.0])
    torch.testing.assert_close(_grad("dapo", logp, old, adv, mask), torch.tensor([[0.0, -1.0]]) / 2)
    torch.testing.assert_close(_grad("cispo", logp, old, adv, mask), torch.tensor([[-1.28, -1.0]]) / 2)
    # gspo: s = sqrt(2) > 1 + 4e-4 with A > 0: clipped, no gradient for the sequence
    torch.testing.assert_close(_grad("gspo", logp, old, adv, mask), torch.zeros(1, 2))
    near = torch.tensor([[-1.0001, -1.0]])  # s = exp(−0.00005) inside the range: every token −s·A / |y|
    s = math.exp(-0.00005)
    torch.testing.assert_close(_grad("gspo", near, old, adv, mask), torch.full((1, 2), -s / 2))


def test_weights_scale_each_tokens_term():
    logp = torch.zeros(1, 2, requires_grad=True)
    w = torch.tensor([[1.0, 0.25]])
    loss, _ = policy_loss("t1", logp, logp.detach(), torch.tensor([1.0]), torch.ones(1, 2, dtype=torch.bool),
                          Settings(aggregation="token_mean"), weight=w)
    loss.backward()
    torch.testing.assert_close(logp.grad, torch.tensor([[-0.5, -0.125]]))


def test_kl_as_a_loss_term_by_hand():
    """k3 = e^x − x − 1, x = log π_ref − log π_θ: zero where they agree, positive either way; β · agg(k3) is
    added with the objective's aggregation, and its gradient is β · (1 − e^x) per token (here / 3 tokens)."""
    logp = torch.tensor([[-1.0, -2.0, -0.5]])
    ref = torch.tensor([[-1.0, -1.0, -1.5]])
    x = ref - logp
    torch.testing.assert_close(k3(logp, ref), x.exp() - x - 1)
    assert k3(logp, ref)[0, 0] == 0 and (k3(logp, ref)[0, 1:] > 0).all()
    mask, adv = torch.ones(1, 3, dtype=torch.bool), torch.tensor([0.0])
    p = logp.clone().requires_grad_(True)
    loss, _ = policy_loss("dapo", p, p.detach(), adv, mask, Settings(0.2, 0.28), ref_logp=ref, beta=0.1)
    assert loss.item() == pytest.approx(0.1 * float((x.exp() - x - 1).mean()))
    loss.backward()
    torch.testing.assert_close(p.grad, 0.1 * (1 - x.exp()) / 3)
