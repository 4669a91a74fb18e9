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
  tokens = np.array([[1, 2, 3], [1, 2, 4], [1, 5, 6]])
  np.testing.assert_array_equal(metrics.branching(tokens, np.ones_like(
      tokens, bool)), [1, 2, 3])


def test_pass_at_k_curve_every_k_equals_subset_enumeration():
  rs = np.random.RandomState(0)
  correct = rs.rand(4, 6) < 0.4
  curve = metrics.pass_at_k_curve(correct, ks=range(1, 7))
  for k in range(1, 7):
    want = np.mean([np.mean([any(row[list(s)]) for s in
                             itertools.combinations(range(6), k)])
                    for row in correct])
    assert curve[k] == pytest.approx(want, abs=1e-12)


def test_majority_vote_ties_abstentions_and_several_correct_answers():
  answers = [
      ["2", "3", "3", "2", None, "2"],  # k=4: 2-2 tie, "2" seen first.
      [None, None, "7", "7"],           # Abstentions count against share.
      ["1", "-1", "-1", "5"],           # Two correct answers; "-1" wins.
      [None, None],                     # No vote at all.
  ]
  correct = [[1, 0, 0, 1, 0, 1], [0, 0, 0, 0], [1, 1, 1, 0], [0, 0]]
  correct = [np.array(c, bool) for c in correct]
  acc, share = metrics.majority_vote(answers, correct, 4)
  # Winners: "2" (correct), "7" (wrong), "-1" (correct), none.
  assert acc == pytest.approx((1 + 0 + 1 + 0) / 4)
  assert share == pytest.approx((2 / 4 + 2 / 4 + 2 / 4 + 0) / 4)
  acc1, share1 = metrics.majority_vote(answers, correct, 1)
  assert acc1 == pytest.approx((1 + 0 + 1 + 0) / 4)
  assert share1 == pytest.approx((1 + 0 + 1 + 0) / 4)


def test_branching_and_first_fork_on_hand_built_samples():
  tokens = np.array([[4, 4, 5, 6], [4, 4, 5, 7], [4, 4, 9, 9]])
  mask = np.ones_like(tokens, bool)
  b = metrics.branching(tokens, mask)
  np.testing.assert_array_equal(b, [1, 1, 2, 3])
  assert metrics.first_fork(b) == 2
  same = np.tile(tokens[:1], (3, 1))
  assert metrics.first_fork(metrics.branching(same, mask)) == 4  # Never.
  mask[2, 2:] = False  # A sample that ended early stops counting.
  np.testing.assert_array_equal(metrics.branching(tokens, mask), [1, 1, 1, 2])


def test_top_label_share_by_counting():
  labels = np.array([[0, 0, 1, -1],    # 2 of 3 valid -> 2/3
                     [3, 4, 5, 6],     # all distinct -> 1/4
                     [-1, -1, -1, -1],  # none valid -> 0
                     [2, 2, 2, 2]])    # one strategy -> 1
  assert metrics.top_label_share(labels) == pytest.approx(
      (2 / 3 + 1 / 4 + 0 + 1) / 4)


def test_skew_weights_follow_zipf():
  w = metrics.skew_weights(4, 1.0)
  raw = np.array([1, 1 / 2, 1 / 3, 1 / 4])
  np.testing.assert_allclose(w, raw / raw.sum())
  np.testing.assert_allclose(metrics.skew_weights(5, 0.0), np.full(5, 0.2))
