"""poly_epo.set_rl.subsets: enumeration and uniform distinct sampling."""

import itertools
import math

import numpy as np
import pytest

from poly_epo.set_rl import all_subsets, sampled_subsets, subset_table


def test_all_subsets_is_every_combination():
  table = all_subsets(7, 3)
  assert table.shape == (35, 3)
  assert [tuple(r) for r in table] == list(itertools.combinations(range(7), 3))


def test_sampled_subsets_distinct_reproducible():
  a = sampled_subsets(16, 8, 300, seed=5)
  b = sampled_subsets(16, 8, 300, seed=5)
  c = sampled_subsets(16, 8, 300, seed=6)
  np.testing.assert_array_equal(a, b)
  assert not np.array_equal(a, c)
  rows = {tuple(r) for r in a}
  assert len(rows) == 300
  assert all(len(set(r)) == 8 and list(r) == sorted(r) for r in rows)


def test_sampled_subsets_are_uniform():
  # Each response should sit in n/N of the sets on average.
  counts = np.zeros(10)
  for seed in range(40):
    for row in sampled_subsets(10, 3, 30, seed):
      counts[row] += 1
  expected = 40 * 30 * 3 / 10
  assert np.abs(counts - expected).max() < 0.15 * expected


def test_rejection_path_for_huge_tables():
  table = sampled_subsets(64, 16, 50, seed=1)  # C(64,16) ~ 4.9e14
  assert len({tuple(r) for r in table}) == 50


def test_subset_table_and_errors():
  assert subset_table(8, 4).shape == (math.comb(8, 4), 4)
  assert subset_table(8, 4, num_sets=500).shape == (70, 4)  # >= C: all
  assert subset_table(8, 4, num_sets=10, seed=0).shape == (10, 4)
  with pytest.raises(ValueError, match="set_size=9"):
    subset_table(8, 9)
