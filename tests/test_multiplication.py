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
