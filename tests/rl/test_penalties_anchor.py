import copy

import pytest
import torch

from t1.rl.anchor import Anchor
from t1.rl.config import SelectConfig
from t1.rl.penalties import PenaltyConfig, check, garbage_reason, is_repetitive
from t1.rl.select import select

CFG = PenaltyConfig()
NORMAL = ("Let x be the number. Then 3x + 5 = 20, so 3x = 15 and x = 5. Check: 3 * 5 + 5 = 20. "
          "The answer is \\boxed{5}.")


def test_penalties_fire_on_crafted_responses_and_not_on_normal_ones():
    assert not check(NORMAL, "Solve 3x+5=20.", True, [1, 2, 3], {0}, CFG).any
    assert check(NORMAL, "Solve 3x+5=20.", False, [1, 2, 3], {0}, CFG).truncated
    looped = "We try again with the same substitution and get the same result once more. " * 25
    assert check(looped, "Solve.", True, [1], set(), CFG).repetitive
    assert not is_repetitive(NORMAL * 3)  # a few repeats are not a loop
    assert is_repetitive("ab" * 12, span=2, times=12) and not is_repetitive("ab" * 11, span=2, times=12)
    assert garbage_reason("x = \ufffd\ufffd", "Solve.") == "replacement character at char 4"
    assert garbage_reason("x = 5\x07\x00", "Solve.") == "control character 0x07 at char 5"
    names = {0: "<pad>"}.get
    assert garbage_reason("x = 5", "Solve.", [5, 0, 0, 7], {0}, name=names) == \
        "special tokens inside the response: 0 <pad> at token 1, 0 <pad> at token 2"
    mixed = garbage_reason("答案是五，" * 5 + "so x = 5", "Solve 3x + 5 = 20 for x.")
    assert mixed.startswith("script mix: 20 of")
    assert garbage_reason("答案是五", "求解方程") is None  # the prompt's own script is fine
    assert garbage_reason("Let θ = π/2, so sin θ = 1 and α + β = γ.", "Find sin θ.") is None  # math Greek


def test_every_penalty_records_its_reason():
    """Each penalised sample says why — the rule, the token ids, where — and a clean one says nothing."""
    assert check(NORMAL, "Solve 3x+5=20.", True, [1, 2, 3], {0}, CFG).reason == ""
    cut = check(NORMAL, "Solve 3x+5=20.", False, [1, 2, 3, 4, 5], {0}, CFG)
    assert cut.reason == "truncated: no stop token in 5 tokens (last ids [2, 3, 4, 5])"
    looped = "We try again with the same substitution and get the same result once more. " * 25
    rep = check("Intro:\n" + looped, "Solve.", True, [1], set(), CFG)
    assert rep.reason.startswith("repetitive: a 80-character span from char 7 occurs ≥ 20 times")
    both = check("x \ufffd", "Solve.", False, [9, 151644, 8], {151644}, CFG, {151644: "<|im_start|>"}.get)
    assert both.truncated and both.garbage and not both.repetitive
    assert both.reason == ("truncated: no stop token in 3 tokens (last ids [9, 151644, 8]); garbage: replacement "
                           "character at char 2")
    special = check("x", "Solve.", True, [9, 151644, 8, 151645], {151644}, CFG, {151644: "<|im_start|>"}.get)
    assert special.reason == "garbage: special tokens inside the response: 151644 <|im_start|> at token 1"


def test_penalty_switches():
    off = PenaltyConfig(truncated=False, repetitive=False, garbage=False)
    assert not check("\ufffd" * 2000, "x", False, [0], {0}, off).any


def _tiny():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(3, 2))


def test_ema_anchor_closed_form():
    policy = _tiny()
    theta0 = [p.detach().clone() for p in policy.parameters()]
    anchor = Anchor(policy, "ema", ema_decay=0.9)
    lam, thetas = 0.9, []
    for step in range(1, 6):
        with torch.no_grad():
            for p in policy.parameters():
                p.add_(torch.randn_like(p))
        thetas.append([p.detach().clone() for p in policy.parameters()])
        anchor.update(policy, step)
    n = len(thetas)
    for j, ref in enumerate(anchor.model.parameters()):
        expected = lam ** n * theta0[j] + sum((1 - lam) * lam ** (n - k) * thetas[k - 1][j]
                                              for k in range(1, n + 1))
        torch.testing.assert_close(ref, expected)
        assert not ref.requires_grad


def test_reset_fixed_and_none_anchors():
    policy = _tiny()
    start = copy.deepcopy(policy)
    reset, fixed, none = Anchor(policy, "reset", reset_every=2), Anchor(policy, "fixed"), Anchor(policy, "none")
    with torch.no_grad():
        for p in policy.parameters():
            p.add_(1.0)
    reset.update(policy, 1)
    fixed.update(policy, 1)
    assert torch.equal(reset.model[0].weight, start[0].weight)  # not yet
    reset.update(policy, 2)
    assert torch.equal(reset.model[0].weight, policy[0].weight)
    assert torch.equal(fixed.model[0].weight, start[0].weight)
    assert none.model is None and none.state_dict() is None


def test_subset_selection():
    reward = torch.tensor([1.0, 0.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0, -1.0, 0.0, 1.0, 0.0])
    adv = torch.zeros(12)
    assert select(reward, adv, 4, SelectConfig()) == list(range(12))
    assert select(reward, adv, 4, SelectConfig(drop_uniform_groups=True)) == [0, 1, 2, 3, 8, 9, 10, 11]
    # at most 2 per group, highest and lowest reward
    assert select(reward, adv, 4, SelectConfig(max_per_group=2)) == [0, 3, 4, 7, 8, 10]


def test_anchor_state_round_trip_and_refusals():
    """Unsharded: the state is a copy of the model's; a state from another model is refused, and a full state
    can only be loaded before the anchor is sharded."""
    policy = _tiny()
    anchor = Anchor(policy, "ema", ema_decay=0.5)
    with torch.no_grad():
        policy[0].weight.add_(1.0)
    anchor.update(policy, 1)
    state = anchor.state_dict()
    assert anchor.state_dict(keep=False) is None
    again = Anchor(_tiny(), "ema")
    again.load_state_dict(state)
    assert all(torch.equal(a, b) for a, b in zip(again.model.parameters(), anchor.model.parameters()))
    state["0.weight"].zero_()  # a copy, not the anchor's own tensors
    assert not torch.equal(anchor.model[0].weight, state["0.weight"])
    with pytest.raises(RuntimeError, match="does not match"):
        again.load_state_dict({"1.weight": torch.zeros(2, 3)})
    again.sharded = True
    with pytest.raises(RuntimeError, match="before distribute"):
        again.load_state_dict(state)


def test_anchor_updates_only_from_a_policy_wrapped_alike():
    anchor = Anchor(_tiny(), "ema")
    with pytest.raises(RuntimeError, match="not wrapped alike"):
        anchor.update(torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.Linear(2, 2)), 1)
    with pytest.raises(RuntimeError, match="not wrapped alike"):
        anchor.update(torch.nn.Sequential(torch.nn.Linear(2, 3)), 1)
