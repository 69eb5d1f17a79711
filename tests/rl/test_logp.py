"""t1.rl.logp: chunked log-probs and entropy give the values and gradients of the unchunked functions in
t1.rl.algo, keep only the logits for the backward, and the trainer's padded mismatch reads the same tokens."""

import pytest
import torch

from t1.rl import algo
from t1.rl.batch import Mismatch
from t1.rl.logp import logp_entropy, mismatch_rows, padded_mismatch, shifted


def reference(logits, targets):
    """The unchunked functions the trainer used: fp32 log-softmax over the whole [.., V] at once (in fp64 for
    fp64 logits, so gradcheck-grade comparisons are possible)."""
    x = logits if logits.dtype == torch.float64 else logits.float()
    logp_all = torch.log_softmax(x, dim=-1)
    return logp_all.gather(-1, targets.unsqueeze(-1)).squeeze(-1), -(logp_all.exp() * logp_all).sum(-1)


def grads(fn, logits, targets, a, b):
    x = logits.detach().clone().requires_grad_()
    lp, h = fn(x, targets)
    ((lp.double() * a).sum() + (h.double() * b).sum()).backward()
    return lp.detach(), h.detach(), x.grad


@pytest.mark.parametrize("chunk", [1, 3, 7, 0])
def test_values_and_gradients_equal_the_unchunked_path_in_fp64(chunk):
    torch.manual_seed(0)
    logits = torch.randn(2, 7, 40, dtype=torch.float64) * 4
    targets = torch.randint(0, 40, (2, 7))
    a, b = torch.randn(2, 7, dtype=torch.float64), torch.randn(2, 7, dtype=torch.float64)
    want = grads(reference, logits, targets, a, b)
    got = grads(lambda x, t: logp_entropy(x, t, chunk), logits, targets, a, b)
    for g, w in zip(got, want):
        assert g.dtype == torch.float64
        torch.testing.assert_close(g, w, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("dtype, tol", [(torch.float64, 1e-12), (torch.bfloat16, 2e-2)])
def test_gradient_written_over_the_logits(dtype, tol):
    """grad_in_place: an output layer's logits take their own gradient; the layer's gradients are unchanged."""
    torch.manual_seed(5)
    h, ids = torch.randn(2, 6, 16, dtype=torch.float64), torch.randint(0, 30, (2, 6))
    a, b = torch.randn(2, 5, dtype=torch.float64), torch.randn(2, 5, dtype=torch.float64)
    out = {}
    for in_place in (False, True):
        torch.manual_seed(6)
        head = torch.nn.Linear(16, 30, dtype=dtype)
        torch.nn.init.normal_(head.weight)
        lp, ent = shifted(head(h.to(dtype)), ids, chunk=3, grad_in_place=in_place)
        ((lp.double() * a).sum() + (ent.double() * b).sum()).backward()
        out[in_place] = lp.detach(), head.weight.grad.double(), head.bias.grad.double()
    for x, y in zip(out[True], out[False]):
        torch.testing.assert_close(x, y, rtol=tol, atol=tol)
    # logits another node needs (here a product's) are refused loudly, never overwritten silently
    x = torch.randn(4, 30, requires_grad=True)
    y = x * 2
    z = y * y  # saves y
    lp, _ = logp_entropy(y, torch.zeros(4, dtype=torch.long), 2, grad_in_place=True)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        (lp.sum() + z.sum()).backward()


def test_gradcheck_both_outputs_and_each_alone():
    torch.manual_seed(1)
    x = (torch.randn(5, 9, dtype=torch.float64) * 3).requires_grad_()
    t = torch.randint(0, 9, (5,))
    assert torch.autograd.gradcheck(lambda z: logp_entropy(z, t, 2), (x,))
    assert torch.autograd.gradcheck(lambda z: logp_entropy(z, t, 2)[1], (x,))  # the entropy's gradient alone
    assert torch.autograd.gradcheck(lambda z: logp_entropy(z, t, 2, entropy=False)[0], (x,))


@pytest.mark.parametrize("dtype, tol", [(torch.float32, 1e-5), (torch.bfloat16, 1e-2)])
def test_shifted_equals_the_trainer_s_former_functions(dtype, tol):
    """What the trainer computed before (algo.gather_logp, algo.token_entropy on logits[:, :-1]) against
    shifted() on the whole logits, chunked across rows and sequences; gradients with respect to the logits."""
    torch.manual_seed(2)
    logits = (torch.randn(3, 11, 64) * 3).to(dtype)
    ids = torch.randint(0, 64, (3, 11))
    a, b = torch.randn(3, 10, dtype=torch.float64), torch.randn(3, 10, dtype=torch.float64)

    def before(x, i):
        return algo.gather_logp(x[:, :-1], i[:, 1:]), algo.token_entropy(x[:, :-1])

    lp0, h0, g0 = grads(before, logits, ids, a, b)
    lp1, h1, g1 = grads(lambda x, i: shifted(x, i, chunk=4), logits, ids, a, b)
    assert lp1.dtype == h1.dtype == torch.float32 and g1.dtype == dtype
    torch.testing.assert_close(lp1, lp0, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(h1, h0, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(g1.double(), g0.double(), rtol=tol, atol=tol)
    assert g1[:, -1].abs().max() == 0  # the last position predicts nothing: no gradient


def test_packed_rows_and_no_entropy():
    torch.manual_seed(3)
    logits, t = torch.randn(13, 50), torch.randint(0, 50, (13,))
    lp, h = logp_entropy(logits, t, chunk=5, entropy=False)
    assert h is None
    torch.testing.assert_close(lp, algo.gather_logp(logits, t))
    with pytest.raises(ValueError, match="disagree"):
        logp_entropy(logits, t[:-1])


def test_backward_keeps_only_the_logits():
    """What autograd saves for the backward: the unchunked path keeps fp32 copies of the whole [tokens, V]
    (the cast, the log-softmax, its exp); the chunked one only the (bf16) logits and the targets."""
    n, V = 64, 1000
    logits = torch.randn(n, V).to(torch.bfloat16).requires_grad_()
    t = torch.randint(0, V, (n,))

    def saved_bytes(fn):
        storages = {}

        def pack(x):
            storages[x.untyped_storage().data_ptr()] = x.untyped_storage().nbytes()
            return x

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda x: x):
            lp, h = fn()
            (lp.sum() + h.sum()).backward()
        return sum(storages.values()) - logits.untyped_storage().nbytes()

    before = saved_bytes(lambda: (algo.gather_logp(logits, t), algo.token_entropy(logits)))
    after = saved_bytes(lambda: logp_entropy(logits, t, chunk=16))
    assert before >= 2 * n * V * 4  # fp32 copies: ≥ 8 bytes per logit beyond the logits (10 measured)
    assert after == t.untyped_storage().nbytes()  # the targets; nothing of [n, V] besides the logits


def test_sampler_check_reads_views_a_few_rows_at_a_time():
    """Same statistics and IS weights as one call on logits[mask] (what the trainer did), without the copy."""
    torch.manual_seed(4)
    logits, ids = torch.randn(3, 9, 30), torch.randint(0, 30, (3, 9))
    mask = torch.zeros(3, 8, dtype=torch.bool)
    mask[0, 2:8] = True
    mask[1, 4:6] = True
    mask[2, 1:7] = True
    sampled = torch.randn(int(mask.sum())) * 0.1 - 3
    one, rows = Mismatch(1.2, 0.95, 2.0), Mismatch(1.2, 0.95, 2.0)
    want = one(logits[:, :-1][mask], ids[:, 1:][mask], sampled)
    got = padded_mismatch(rows, logits, ids[:, 1:], mask, sampled)
    torch.testing.assert_close(got, want)
    for k, v in one.stats().items():
        assert rows.stats()[k] == pytest.approx(v, rel=1e-6), k
    assert padded_mismatch(rows, logits, ids[:, 1:], mask, None) is None
    few = Mismatch(1.2, 0.95, 2.0)  # a few positions per call: the same weights and statistics
    torch.testing.assert_close(mismatch_rows(few, logits[:, :-1][mask], ids[:, 1:][mask], sampled, rows=3), want)
    assert few.stats() == pytest.approx(one.stats(), rel=1e-6)
    assert padded_mismatch(Mismatch(1.0, 1.0, 0.0), logits, ids[:, 1:], mask, sampled) is None  # no IS: no weights
