"""poly_epo.step_watch: all-zero advantages are reported with their cause."""

import numpy as np

from poly_epo import step_watch
from poly_epo.config_defaults import base_config
from poly_epo.labels import DEGENERATE


def _cfg(**kw):
  c = base_config()
  for k, v in kw.items():
    setattr(c, k, v)
  return c


def test_a_streak_is_reported_once_with_its_cause():
  watch = step_watch.ZeroAdvantageWatch(_cfg(), patience=3)
  zeros, rewards = np.zeros((2, 8)), np.zeros((2, 8))
  labels = np.full((2, 8), DEGENERATE)
  notes = [watch.step(s, zeros, rewards, labels, unparsed=16)
           for s in range(6)]
  assert notes[:2] == [None, None] and notes[3:] == [None] * 3
  assert "3 steps in a row (steps 0-2)" in notes[2]
  assert "rewards are equal within every prompt (0)" in notes[2]
  assert "16 responses had no readable final answer" in notes[2]
  assert watch.step(6, np.ones((2, 8)), rewards, labels) is None
  assert watch.run == 0


def test_causes():
  rewards = np.array([[1.0, 0, 1, 0, 1, 0, 1, 0]])
  none = np.full((1, 8), DEGENERATE)
  assert "one set per prompt" in step_watch.zero_cause(
      _cfg(num_samples=4, set_size=4), rewards, none, 0)
  assert "no strategy labels" in step_watch.zero_cause(
      _cfg(algorithm="polyepo"), rewards, none, 3)
  assert "equal within every prompt (1)" in step_watch.zero_cause(
      _cfg(algorithm="grpo"), np.ones((1, 8)), np.zeros((1, 8), int), 0)
