"""poly_epo.set_rl.baselines against hand-derived small cases."""

import math

import numpy as np
import pytest

from poly_epo import set_rl
from set_rl_reference import DEG


def test_grpo_hand_case_and_ddof():
  r = np.array([[1.0, 0.0, 0.0, 1.0]])
  l = np.zeros((1, 4), int)
  # mean 0.5; population std 0.5; unbiased std sqrt(1/3).
  pop = np.asarray(set_rl.advantages("grpo", r, l, ddof=0, eps=0.0))[0]
  np.testing.assert_allclose(pop, [1, -1, -1, 1], atol=1e-6)
  unb = np.asarray(set_rl.advantages("grpo", r, l, ddof=1, eps=0.0))[0]
  np.testing.assert_allclose(unb, np.array([1, -1, -1, 1]) * 0.5 /
                             math.sqrt(1 / 3), atol=1e-6)
  eps = np.asarray(set_rl.advantages("grpo", r, l, ddof=0, eps=0.5))[0]
  np.testing.assert_allclose(eps, np.array([1, -1, -1, 1]) * 0.5, atol=1e-6)


def test_grpo_zero_variance_gives_zeros_not_nan():
  r = np.array([[1.0] * 6, [0.0] * 6])
  adv = np.asarray(set_rl.advantages("grpo", r, np.zeros((2, 6), int),
                                     eps=0.0))
  assert np.isfinite(adv).all() and (adv == 0).all()


def test_drgrpo_and_rloo():
  r = np.array([[1.0, 0.5, 0.0]])
  l = np.zeros((1, 3), int)
  np.testing.assert_allclose(np.asarray(set_rl.advantages("drgrpo", r, l))[0],
                             [0.5, 0.0, -0.5], atol=1e-7)
  # RLOO: r_i minus the mean of the other two.
  np.testing.assert_allclose(np.asarray(set_rl.advantages("rloo", r, l))[0],
                             [1 - 0.25, 0.5 - 0.5, 0 - 0.75], atol=1e-7)


def test_grpo_div_bonus_hand_case():
  # N=4; labels A A B DEG. |A|=2 -> bonus (4/2-1)/3 = 1/3; |B|=1 -> 1;
  # DEGENERATE -> 0.
  r = np.array([[1.0, 0.0, 1.0, 0.0]])
  l = np.array([[7, 7, 9, DEG]])
  bonus = np.array([1 / 3, 1 / 3, 1.0, 0.0])
  shaped = r[0] + 0.5 * bonus
  want = shaped - shaped.mean()
  got = np.asarray(set_rl.advantages("grpo_div", r, l, div_coef=0.5))[0]
  np.testing.assert_allclose(got, want, atol=1e-6)
  no_div = np.asarray(set_rl.advantages("grpo_div", r, l, div_coef=0.0))[0]
  np.testing.assert_allclose(no_div, r[0] - r[0].mean(), atol=1e-7)


def test_passk_hand_case_and_equals_max_objective():
  # N=4, k=2, c=1: rho = 1 - C(3,2)/C(4,2) = 1/2.
  # correct: 1/2; wrong: 1 - 1/2 - C(2,1)/C(3,1) = -1/6.
  r = np.array([[1.0, 0.0, 0.0, 0.0]])
  l = np.zeros((1, 4), int)
  got = np.asarray(set_rl.advantages("passk", r, l, set_size=2))[0]
  np.testing.assert_allclose(got, [0.5, -1 / 6, -1 / 6, -1 / 6], atol=1e-6)
  rs = np.random.RandomState(0)
  r = (rs.rand(10, 8) < 0.4).astype(np.float32)
  l = np.zeros((10, 8), int)
  np.testing.assert_allclose(
      np.asarray(set_rl.advantages("passk", r, l, set_size=4)),
      np.asarray(set_rl.advantages("max", r, l, set_size=4)), atol=1e-6)


def test_invalid_responses_and_prompts():
  r = np.array([[1.0, 0.0, 1.0, 0.0], [1.0, 0.0, 1.0, 0.0]])
  l = np.zeros((2, 4), int)
  valid = np.array([[True, True, True, False], [True, False, False, False]])
  for name in ("grpo", "drgrpo", "rloo", "grpo_div", "passk"):
    adv = np.asarray(set_rl.advantages(name, r, l, valid=valid, set_size=2))
    assert adv[0, 3] == 0 and (adv[1] == 0).all(), name
  dr = np.asarray(set_rl.advantages("drgrpo", r, l, valid=valid))[0]
  np.testing.assert_allclose(dr[:3], np.array([1, 0, 1]) - 2 / 3, atol=1e-6)


def test_names_are_listed():
  names = set_rl.algorithm_names()
  for n in ("polyepo", "grpo", "drgrpo", "rloo", "grpo_div", "passk", "mean",
            "max", "polychromic"):
    assert n in names
  with pytest.raises(ValueError, match="unknown baseline"):
    set_rl.response_advantages("nope", np.zeros((1, 2)), np.zeros((1, 2)),
                               np.ones((1, 2), bool))
