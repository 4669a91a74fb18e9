"""Which size-n subsets of the N responses the kernel scores (DESIGN 3.1).

Tables are host-side numpy, built once per (N, n) for full enumeration; a
sampled table (K distinct subsets, uniform without replacement) is drawn from
a seed, so the same seed gives the same sets.
"""

from __future__ import annotations

import functools
import itertools
import math

import numpy as np

# Enumerating more subsets than this to sample from is wasteful; above it,
# distinct subsets are drawn by rejection instead.
_ENUMERATE_LIMIT = 2_000_000


@functools.lru_cache(maxsize=64)
def all_subsets(num_responses: int, set_size: int) -> np.ndarray:
  """Every size-n subset, lexicographic: int32 [C(N, n), n]."""
  _check(num_responses, set_size)
  table = np.fromiter(
      itertools.chain.from_iterable(
          itertools.combinations(range(num_responses), set_size)),
      dtype=np.int32)
  table = table.reshape(-1, set_size)
  table.setflags(write=False)
  return table


def sampled_subsets(num_responses: int, set_size: int, num_sets: int,
                    seed: int) -> np.ndarray:
  """`num_sets` distinct subsets drawn uniformly: int32 [K, n], sorted rows."""
  _check(num_responses, set_size)
  total = math.comb(num_responses, set_size)
  if not 1 <= num_sets <= total:
    raise ValueError(f"num_sets={num_sets} must be in [1, C({num_responses}, "
                     f"{set_size}) = {total}]")
  rng = np.random.default_rng(seed)
  if total <= _ENUMERATE_LIMIT:
    pick = rng.choice(total, size=num_sets, replace=False)
    return np.asarray(all_subsets(num_responses, set_size)[np.sort(pick)])
  seen: set[tuple[int, ...]] = set()
  rows = []
  while len(rows) < num_sets:
    row = tuple(sorted(rng.choice(num_responses, set_size, replace=False)))
    if row not in seen:
      seen.add(row)
      rows.append(row)
  return np.asarray(sorted(rows), np.int32)


def subset_table(num_responses: int, set_size: int,
                 num_sets: int | None = None, seed: int = 0) -> np.ndarray:
  """All subsets when `num_sets` is None or >= C(N, n), else a sample."""
  total = math.comb(num_responses, set_size) if 1 <= set_size <= num_responses \
      else 0
  if num_sets is None or num_sets >= total:
    return all_subsets(num_responses, set_size)
  return sampled_subsets(num_responses, set_size, num_sets, seed)


def _check(num_responses: int, set_size: int):
  if not 1 <= set_size <= num_responses:
    raise ValueError(f"set_size={set_size} must be between 1 and the number "
                     f"of responses per prompt N={num_responses}")
