"""poly_epo.tasks.multiplication: rewards, pattern labels, splits."""

import numpy as np

from poly_epo import tasks
from poly_epo.set_rl import DEGENERATE
from poly_epo.tasks import multiplication as mul
from task_safety import check_hostile


def test_rewards():
  t = tasks.get("multiplication")
  assert t.reward("47*16=", "47*(10+6)=470+282=752") == 1.0
  assert t.reward("47*16=", "752") == 1.0
  assert t.reward("47*16=", "47*(10+6)=470+282=753") == 0.0
  assert t.reward("47*16=", "47*(10+6)=470+282") == 0.0  # Ends mid-way.
  assert t.reward("47*16=", "") == 0.0


def test_each_pattern_has_its_own_label():
  cases = {
      mul.DIRECT: "752",
      mul.FIRST_ADD: "(40+7)*16=640+112=752",
      mul.FIRST_SUB: "(50-3)*16=800-48=752",
      mul.SECOND_ADD: "47*(10+6)=470+282=752",
      mul.SECOND_SUB: "47*(20-4)=940-188=752",
      mul.BOTH_SPLIT: "(40+7)*(10+6)=400+240+70+42=752",
      mul.FACTOR: "47*2*8=94*8=752",
  }
  t = tasks.get("multiplication")
  labels = t.label("47*16=", list(cases.values()))
  assert labels == list(cases.keys())
  assert len(set(labels)) == 7


def test_same_pattern_different_spacing_and_symbols():
  t = tasks.get("multiplication")
  variants = ["(40+7)*16=640+112=752", "( 40 + 7 ) * 16 = 640 + 112 = 752",
              "(40+7)x16=640+112=752", "(40+7)×16=640+112=750"]
  assert set(t.label("47*16=", variants)) == {mul.FIRST_ADD}
  assert t.label("47*16=", ["hello", "(40+7)*", "=="]) == [DEGENERATE] * 3


def test_worked_examples_are_correct_and_labelled():
  for a in range(11, 100):
    for b in range(3, 20):
      for label in range(7):
        text = mul.worked(a, b, label)
        if text is None:
          continue
        assert mul.final_answer(text) == a * b, text
        assert mul.pattern(text) == label, text


def test_hostile_inputs():
  check_hostile(tasks.get("multiplication"), "47*16=")


def test_splits_and_corpus():
  t = tasks.get("multiplication")
  train, held = t.train_prompts(0, 500), t.heldout_prompts(0, 500)
  assert train == t.train_prompts(0, 500)
  assert not set(train) & set(held)
  pairs = t.corpus(0, 2000)
  rewards = np.array([t.reward(p, r) for p, r in pairs])
  assert 0.6 < rewards.mean() < 0.95
  patterns = {mul.pattern(r) for _, r in pairs}
  assert patterns == set(range(7))


def test_corpus_skew_zero_reproduces_the_uniform_corpus_draw_for_draw():
  """The pre-skew generator, re-implemented: one uniform pattern draw per
  operand pair, redrawn when the pattern does not apply."""
  t = tasks.get("multiplication", corpus_skew=0.0, mistake_rate=0.0)
  rng = np.random.default_rng([3, 2])  # [seed, the corpus split]
  want = []
  while len(want) < 300:
    a, b = int(rng.integers(11, 100)), int(rng.integers(3, 20))
    text = mul.worked(a, b, int(rng.integers(len(mul.PATTERN_NAMES))))
    if text is not None:
      assert rng.random() >= 0.0  # The mistake draw (mistake_rate 0).
      want.append((f"{a}*{b}=", text))
  assert t.corpus(3, 300) == want


def test_corpus_skew_frequencies_follow_the_formula():
  """Pattern of rank r in SKEW_ORDER is drawn with weight (r + 1)^-s and
  kept when it applies to the operands, so its corpus frequency is
  w_r a_r / sum_j w_j a_j, a_r its applicability over all operand pairs
  (enumerated)."""
  s = 1.5
  pairs = [(a, b) for a in range(11, 100) for b in range(3, 20)]
  applies = np.array([np.mean([mul.worked(a, b, lab) is not None
                               for a, b in pairs]) for lab in mul.SKEW_ORDER])
  w = np.arange(1, 8, dtype=float) ** -s
  want = w * applies / (w * applies).sum()
  n = 20000
  corpus = tasks.get("multiplication", corpus_skew=s,
                     mistake_rate=0.0).corpus(0, n)
  counts = np.bincount([mul.pattern(r) for _, r in corpus], minlength=7)
  got = counts[list(mul.SKEW_ORDER)] / n
  sigma = np.sqrt(want * (1 - want) / n)
  assert np.all(np.abs(got - want) < 5 * sigma + 1e-9), (got, want)
  assert got[0] > 0.5  # A dominant strategy and a tail.
