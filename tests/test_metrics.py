"""poly_epo.metrics against brute-force definitions."""

import itertools
import math

import numpy as np
import pytest

from poly_epo import metrics


def test_pass_at_k_equals_subset_enumeration():
  for m in range(1, 8):
    for c in range(m + 1):
      outcomes = [1] * c + [0] * (m - c)
      for k in range(1, m + 1):
        subsets = list(itertools.combinations(outcomes, k))
        want = sum(any(s) for s in subsets) / len(subsets)
        assert metrics.pass_at_k(m, c, k) == pytest.approx(want, abs=1e-12)


def test_pass_at_k_large_is_stable():
  got = metrics.pass_at_k(2048, 3, 1024)
  want = 1 - math.comb(2045, 1024) / math.comb(2048, 1024)
  assert got == pytest.approx(want, rel=1e-9)
  with pytest.raises(ValueError):
    metrics.pass_at_k(4, 5, 1)


def test_curve_distinct_majority_branching():
  correct = np.array([[1, 0, 0, 0], [0, 0, 0, 0], [1, 1, 1, 1]], bool)
  curve = metrics.pass_at_k_curve(correct)
  assert sorted(curve) == [1, 2, 4]
  assert curve[1] == pytest.approx((0.25 + 0 + 1) / 3)
  labels = np.array([[0, 1, 1, 2], [0, 0, 0, 0], [3, 3, -1, 4]])
  np.testing.assert_array_equal(metrics.distinct_correct(labels, correct),
                                [1, 0, 2])
  acc, share = metrics.majority_at_k([["5", "5", "3", None], ["1", "2"]],
                                     ["5", "2"], 4)
  assert acc == pytest.approx(0.5) and share == pytest.approx((2 / 4 + 1 / 4)
                                                              / 2)
  tokens = np.array([[1, 2, 3], [1, 2, 4], [1, 5, 6]])
  np.testing.assert_array_equal(metrics.branching(tokens, np.ones_like(
      tokens, bool)), [1, 2, 3])
