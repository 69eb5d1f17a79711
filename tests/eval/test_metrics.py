"""pass@k, mean ± s.e. and majority voting (t1.eval.metrics)."""

import itertools

import pytest

from t1.eval.metrics import majority_correct, mean_stderr, pass_at_k


@pytest.mark.parametrize("n, c, k", [(5, 0, 1), (5, 2, 1), (5, 2, 2), (6, 3, 3), (8, 1, 4), (7, 6, 5), (4, 4, 2)])
def test_pass_at_k_against_brute_force(n, c, k):
    outcomes = [True] * c + [False] * (n - c)
    subsets = list(itertools.combinations(range(n), k))
    brute = sum(any(outcomes[i] for i in s) for s in subsets) / len(subsets)
    assert pass_at_k(n, c, k) == pytest.approx(brute)



def test_mean_stderr_and_majority():
    m, se = mean_stderr([1.0, 0.0, 1.0, 0.0])
    assert m == 0.5 and se == pytest.approx(0.5 / 2 * (4 / 3) ** 0.5)
    assert majority_correct(["5", "7", "5", None], [True, False, True, False])
    assert not majority_correct(["7", "7", "5"], [False, False, True])
    assert not majority_correct([None, None], [False, False])

