"""poly_epo.tasks.polynomial: rewards, labels, splits, the no-shortcut design."""

import re

import numpy as np

from poly_epo import tasks
from poly_epo.set_rl import DEGENERATE
from poly_epo.tasks.polynomial import solutions
from task_safety import check_hostile


def _range(prompt):
  lo, hi = re.search(r"\[(-?\d+),(-?\d+)\]", prompt).groups()
  return int(lo), int(hi)


def test_rewards_on_hand_written_answers():
  t = tasks.get("polynomial")
  p = "y=2x^2-3x+5, x in [-3,4]:"
  assert t.reward(p, "(2,7)") == 1.0  # 8 - 6 + 5
  assert t.reward(p, " (0,5) ") == 1.0
  assert t.reward(p, "(2,8)") == 0.0  # Wrong y.
  assert t.reward(p, "(5,40)") == 0.0  # Right y, x outside the range.
  assert t.reward(p, "(2,7) extra") == 0.0  # Not a clean answer.
  assert t.reward("x*y=12, x in [1,4]:", "(3,4)") == 1.0
  assert t.reward("x*y=12, x in [1,4]:", "(6,2)") == 0.0
  assert t.reward("x^2+y^2=25, x in [-5,-1]:", "(-3,-4)") == 1.0
  assert t.reward("y=-x+7, x in [1,3]:", "(1,6)") == 1.0
  assert t.reward("y=x^2-x, x in [1,3]:", "(3,6)") == 1.0


def test_labels_are_distinct_answers():
  t = tasks.get("polynomial")
  labels = t.label("y=x+1, x in [-2,2]:",
                   ["(1,2)", "(0,1)", "(1,2)", "junk", " (0,1)"])
  assert labels == [0, 1, 0, DEGENERATE, 1]


def test_hostile_inputs():
  check_hostile(tasks.get("polynomial"), "y=2x^2-3x+5, x in [-3,4]:")


def test_splits_disjoint_seeded_and_shortcut_free():
  t = tasks.get("polynomial")
  train = t.train_prompts(3, 400)
  held = t.heldout_prompts(3, 400)
  assert t.train_prompts(3, 400) == train
  assert t.train_prompts(4, 400) != train
  assert not set(train) & set(held)
  assert all(_range(p)[0] <= 0 <= _range(p)[1] for p in train)
  assert all(not _range(p)[0] <= 0 <= _range(p)[1] for p in held)
  # x=0 (the collapse seen in the prototype) solves no held-out prompt.
  for p in held:
    _, holds, lo, hi = t.parse_prompt(p)
    assert not any(t.reward(p, f"(0,{y})") for y in range(-20, 21))
  # Every prompt, train and held-out, has at least two distinct answers.
  for p in train[:50] + held[:50]:
    family, _, lo, hi = t.parse_prompt(p)
    correct = [t.reward(p, f"({x},{y})") for x in range(lo, hi + 1)
               for y in range(-120, 121)]
    assert sum(correct) >= 2


def test_corpus_answers_spread_and_partly_wrong():
  t = tasks.get("polynomial", mistake_rate=0.3)
  pairs = t.corpus(0, 2000)
  rewards = np.array([t.reward(p, r) for p, r in pairs])
  assert 0.6 < rewards.mean() < 0.8
  xs = [int(r[1:].split(",")[0]) for _, r in pairs]
  assert len(set(xs)) >= 12  # Broad coverage of x.
  # Both kinds of range appear (RL sees only the 0-containing kind).
  kinds = {_range(p)[0] <= 0 <= _range(p)[1] for p, _ in pairs}
  assert kinds == {True, False}


def test_solutions_enumerates_sums_of_squares():
  assert sorted(solutions("sq", (25,), -5, 5)) == sorted(
      [(x, y) for x in range(-5, 6) for y in range(-5, 6)
       if x * x + y * y == 25])


def test_corpus_skew_zero_reproduces_the_uniform_corpus_draw_for_draw():
  t = tasks.get("polynomial", corpus_skew=0.0, mistake_rate=0.0)
  rng = np.random.default_rng([5, 2])  # [seed, the corpus split]
  want = []
  for _ in range(300):
    family, coefs, lo, hi, sols = t._problem(rng, rng.random() < 0.5)
    x, y = sols[int(rng.integers(len(sols)))]
    assert rng.random() >= 0.0  # The mistake draw (mistake_rate 0).
    want.append((t.format_prompt(family, coefs, lo, hi), f"({x},{y})"))
  assert t.corpus(5, 300) == want


def test_corpus_skew_frequencies_follow_the_formula():
  """The answer of rank r (by |x|, x = 0 first, positive x before negative,
  then positive y first) among a problem's n solutions (enumerated) has probability w_r / sum_{j<n} w_j,
  w_r = (r + 1)^-s: its expected count is that summed over the corpus."""
  from poly_epo.tasks.polynomial import PolynomialTask
  s, n = 2.0, 6000
  t = tasks.get("polynomial", corpus_skew=s, mistake_rate=0.0)
  got, want = np.zeros(8), np.zeros(8)
  zero_share = []
  for prompt, answer in t.corpus(1, n):
    _, holds, lo, hi = PolynomialTask.parse_prompt(prompt)
    sols = sorted(((x, y) for x in range(lo, hi + 1)
                   for y in range(-300, 301) if holds(x, y)),
                  key=lambda p: (abs(p[0]), -p[0], -p[1]))
    x, y = (int(v) for v in answer.strip("()").split(","))
    got[sols.index((x, y))] += 1
    w = np.arange(1, len(sols) + 1, dtype=float) ** -s
    want[:len(sols)] += w / w.sum()
    if sols[0][0] == 0:
      zero_share.append(x == 0)
  sigma = np.sqrt(want)  # Poisson-ish bound per rank.
  assert np.all(np.abs(got - want) < 5 * sigma + 1), (got, want)
  assert np.mean(zero_share) > 0.5  # x = 0 dominates where it solves.
