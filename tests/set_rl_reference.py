"""Brute-force set-RL references in plain Python (independent of the package)."""

import itertools

DEG = -1  # The package's DEGENERATE; the tests check they agree.


def ref_objective(name, rewards, labels, require_multiple=False):
  n = len(rewards)
  if name == "mean":
    return sum(rewards) / n
  if name == "max":
    return max(rewards)
  if name == "polychromic":
    distinct = len({l for l in labels if l != DEG})
    if require_multiple and distinct < 2:
      return 0.0
    return sum(rewards) / n * distinct / n
  raise ValueError(name)


def ref_advantages(rewards, labels, n, name, reduce="mean", sets=None,
                   require_multiple=False):
  """Marginal set advantages of one prompt by itertools enumeration."""
  big_n = len(rewards)
  sets = sets if sets is not None else list(
      itertools.combinations(range(big_n), n))
  scores = [ref_objective(name, [rewards[i] for i in s],
                          [labels[i] for i in s], require_multiple)
            for s in sets]
  base = sum(scores) / len(scores)
  out = []
  for i in range(big_n):
    mine = [f - base for f, s in zip(scores, sets) if i in s]
    if not mine:
      out.append(0.0)
    else:
      out.append(sum(mine) / len(mine) if reduce == "mean" else sum(mine))
  return out
