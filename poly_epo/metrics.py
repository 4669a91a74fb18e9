"""Evaluation metrics (DESIGN 3.6): pass@k, majority@k, strategy counts,
branching. Pure numpy on host-side results."""

from __future__ import annotations

import collections
from typing import Sequence

import numpy as np


def pass_at_k(num_samples: int, num_correct: int, k: int) -> float:
  """Unbiased pass@k = 1 - C(m-c, k) / C(m, k), as a stable product.

  C(m-c, k)/C(m, k) = prod_{i=m-c+1}^{m} (1 - k/i), never forming large
  binomials.
  """
  m, c = num_samples, num_correct
  if not 0 <= c <= m or not 1 <= k <= m:
    raise ValueError(f"pass@k needs 0 <= c <= m and 1 <= k <= m; got m={m}, "
                     f"c={c}, k={k}")
  if m - c < k:
    return 1.0
  return float(1.0 - np.prod(1.0 - k / np.arange(m - c + 1, m + 1)))


def pass_at_k_curve(correct_PM, ks: Sequence[int] | None = None) -> dict:
  """Mean pass@k over prompts for each k (default 1, 2, 4, ..., m).

  correct_PM: bool [P, M] (prompt x sample).
  """
  correct = np.asarray(correct_PM, bool)
  m = correct.shape[1]
  if ks is None:
    ks = sorted({min(2**i, m) for i in range(m.bit_length())} | {m})
  counts = correct.sum(1)
  return {k: float(np.mean([pass_at_k(m, int(c), k) for c in counts]))
          for k in ks}


def distinct_correct(labels_PM, correct_PM) -> np.ndarray:
  """Distinct strategy labels (non-negative) among correct responses: [P]."""
  labels = np.asarray(labels_PM)
  correct = np.asarray(correct_PM, bool)
  return np.array([len({int(l) for l, c in zip(row_l, row_c) if c and l >= 0})
                   for row_l, row_c in zip(labels, correct)])


def top_label_share(labels_PM) -> float:
  """The dominant strategy's share: per prompt, the most frequent
  non-negative label's count over the prompt's non-negative labels (prompts
  with none count 0), averaged over prompts. 1/m for all-distinct labels,
  1 for a policy with one strategy per prompt."""
  shares = []
  for row in np.asarray(labels_PM):
    valid = row[row >= 0]
    shares.append(np.unique(valid, return_counts=True)[1].max() / len(valid)
                  if len(valid) else 0.0)
  return float(np.mean(shares)) if shares else 0.0


def skew_weights(n: int, skew: float) -> np.ndarray:
  """Zipf-like strategy frequencies: rank r (0-based) of n gets weight
  (r + 1) ** -skew, normalised; skew 0 is uniform."""
  w = (np.arange(1, n + 1, dtype=np.float64)) ** -float(skew)
  return w / w.sum()


def majority_vote(answers_PM: Sequence[Sequence], correct_PM, k: int
                  ) -> tuple[float, float]:
  """(accuracy, mean winning vote share) of a majority vote over each
  prompt's first k answers, for tasks with several correct answers.

  answers_PM: per prompt, m answers in the task's canonical form (equal
  strings = the same answer; None abstains). correct_PM: per prompt, m
  bools (rows may differ in length, as the answers' may). The
  winner is the answer with most votes, ties going to the one seen first;
  the vote is correct when a response giving the winner was correct; the
  share is the winner's votes / k (abstentions count against it). A prompt
  with no vote scores 0 and share 0.
  """
  accs, shares = [], []
  for row, ok in zip(answers_PM, correct_PM):
    ok = np.asarray(ok, bool)
    votes = collections.Counter(a for a in row[:k] if a is not None)
    if not votes:
      accs.append(0.0)
      shares.append(0.0)
      continue
    winner, n = votes.most_common(1)[0]  # Ties: first inserted wins.
    accs.append(float(any(a == winner and c for a, c in zip(row[:k],
                                                              ok[:k]))))
    shares.append(n / k)
  return float(np.mean(accs)), float(np.mean(shares))


def first_fork(branching_L) -> int:
  """The first position where a prompt's samples stop sharing one prefix,
  from its `branching` counts (L when they never fork)."""
  forked = np.nonzero(np.asarray(branching_L) > 1)[0]
  return int(forked[0]) if forked.size else len(branching_L)


def branching(tokens_ML, mask_ML) -> np.ndarray:
  """Distinct token prefixes at each position over the m samples: [L]."""
  tokens = np.asarray(tokens_ML)
  mask = np.asarray(mask_ML, bool)
  out = []
  for t in range(tokens.shape[1]):
    alive = mask[:, t]
    prefixes = {tuple(row[:t + 1]) for row, a in zip(tokens, alive) if a}
    out.append(len(prefixes))
  return np.array(out)
