"""poly_epo.set_rl.kernel: marginal set advantages against brute force and
the facts of DESIGN 3.1."""

import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from poly_epo import set_rl
from set_rl_reference import DEG, ref_advantages


def _random_group(rs, big_n, p_deg=0.2):
  r = rs.choice([0.0, 0.25, 0.5, 1.0], size=big_n)
  l = rs.randint(0, 4, big_n)
  l[rs.rand(big_n) < p_deg] = DEG
  return r, l


@pytest.mark.parametrize("name", ["mean", "max", "polychromic"])
@pytest.mark.parametrize("reduce", ["mean", "sum"])
@pytest.mark.parametrize("big_n,n", [(5, 2), (6, 3), (8, 4), (7, 7), (4, 1)])
def test_against_brute_force(name, reduce, big_n, n):
  rs = np.random.RandomState(big_n * 10 + n)
  groups = [_random_group(rs, big_n) for _ in range(6)]
  r = np.stack([g[0] for g in groups])
  l = np.stack([g[1] for g in groups])
  got = np.asarray(set_rl.set_advantages(r, l, objective=name, set_size=n,
                                         reduce=reduce))
  want = np.array([ref_advantages(ri.tolist(), li.tolist(), n, name, reduce)
                   for ri, li in zip(r, l)])
  assert got.dtype == np.float32
  scale = max(np.abs(want).max(), 1e-3)
  assert np.abs(got - want).max() <= 1e-5 * scale + 1e-7


def test_float64_against_brute_force():
  jax.config.update("jax_enable_x64", True)
  try:
    rs = np.random.RandomState(1)
    r = rs.rand(3, 8)
    l = rs.randint(-1, 3, (3, 8))
    got = np.asarray(set_rl.set_advantages(jnp.asarray(r, jnp.float64), l,
                                           objective="polychromic",
                                           set_size=4))
    want = np.array([ref_advantages(ri.tolist(), li.tolist(), 4,
                                    "polychromic") for ri, li in zip(r, l)])
    assert got.dtype == np.float64
    assert np.abs(got - want).max() < 1e-6
  finally:
    jax.config.update("jax_enable_x64", False)


def test_require_multiple_clusters_against_brute_force():
  rs = np.random.RandomState(3)
  r = rs.rand(4, 6)
  l = rs.randint(-1, 2, (4, 6))
  got = np.asarray(set_rl.set_advantages(r, l, set_size=3,
                                         require_multiple_clusters=True))
  want = np.array([ref_advantages(ri.tolist(), li.tolist(), 3, "polychromic",
                                  require_multiple=True)
                   for ri, li in zip(r, l)])
  assert np.abs(got - want).max() < 1e-6


@pytest.mark.parametrize("big_n,n", [(8, 4), (6, 2), (5, 3)])
def test_mean_objective_is_scaled_drgrpo(big_n, n):
  rs = np.random.RandomState(0)
  r = rs.rand(5, big_n)
  l = rs.randint(0, 3, (5, big_n))
  got = np.asarray(set_rl.set_advantages(r, l, objective="mean", set_size=n))
  drgrpo = r - r.mean(1, keepdims=True)
  np.testing.assert_allclose(got, (big_n - n) / (n * (big_n - 1)) * drgrpo,
                             atol=1e-6)


@pytest.mark.parametrize("big_n,n", [(8, 4), (6, 2), (10, 3)])
def test_max_objective_is_passk_training_closed_form(big_n, n):
  rows = []
  for c in range(big_n + 1):  # Every number of correct responses.
    row = np.zeros(big_n)
    row[np.random.RandomState(c).permutation(big_n)[:c]] = 1.0
    rows.append(row)
  r = np.stack(rows)
  got = np.asarray(set_rl.set_advantages(r, np.zeros_like(r, int),
                                         objective="max", set_size=n))
  for c, (row, adv) in enumerate(zip(r, got)):
    comb = lambda a, b: math.comb(a, b) if a >= 0 else 0
    rho = 1 - comb(big_n - c, n) / comb(big_n, n)
    wrong = 1 - rho - comb(big_n - c - 1, n - 1) / comb(big_n - 1, n - 1)
    want = np.where(row == 1, 1 - rho, wrong)
    np.testing.assert_allclose(adv, want, atol=1e-6)


def test_equal_set_scores_give_exact_zeros():
  r = np.full((3, 8), 0.3)
  l = np.array([[1] * 8, [DEG] * 8, list(range(8))])
  for name in ("mean", "max", "polychromic"):
    adv = np.asarray(set_rl.set_advantages(r, l, objective=name, set_size=4))
    assert (adv == 0).all(), name
  # All wrong, any labels: every set scores 0.
  adv = set_rl.set_advantages(np.zeros((1, 8)), np.arange(8)[None], set_size=4)
  assert (np.asarray(adv) == 0).all()


def test_permutation_equivariance():
  rs = np.random.RandomState(4)
  r, l = _random_group(rs, 8)
  perm = rs.permutation(8)
  a = np.asarray(set_rl.set_advantages(r[None], l[None], set_size=4))[0]
  b = np.asarray(set_rl.set_advantages(r[perm][None], l[perm][None],
                                       set_size=4))[0]
  np.testing.assert_allclose(b, a[perm], atol=1e-7)


def test_worked_example_new_wrong_response():
  r = np.array([[1, 1, 1, 1, 1, 1, 1, 0.0]])
  l = np.array([[0] * 7 + [1]])
  adv = np.asarray(set_rl.set_advantages(r, l, set_size=4))[0]
  assert adv[7] == pytest.approx(0.0625, abs=1e-7)
  np.testing.assert_allclose(adv[:7], -0.0625 * 5 / 35, atol=1e-7)
  assert adv[:7] == pytest.approx(-0.00893, abs=5e-6)
  dr = np.asarray(set_rl.advantages("drgrpo", r, l))[0]
  assert dr[7] == pytest.approx(-0.875) and dr[0] == pytest.approx(0.125)


def test_second_scenario_rare_correct_strategy():
  r = np.array([[1, 1, 1, 1, 1, 0, 0, 0.0]])
  l = np.array([[0, 0, 0, 0, 1, 2, 3, 4]])  # A A A A B C D E
  adv = np.asarray(set_rl.set_advantages(r, l, set_size=4))[0]
  assert adv.argmax() == 4  # The rare correct B.
  assert (adv[5:] < 0).all()  # The unique wrong ones.
  assert adv[4] > adv[0]


def test_invalid_prompts_and_too_few_valid_get_zero():
  rs = np.random.RandomState(5)
  r = rs.rand(3, 8)
  l = rs.randint(0, 4, (3, 8))
  full = np.asarray(set_rl.set_advantages(r, l, set_size=4))
  adv = np.asarray(set_rl.set_advantages(r, l, set_size=4,
                                         valid=np.array([True, False, True])))
  assert (adv[1] == 0).all()
  np.testing.assert_array_equal(adv[[0, 2]], full[[0, 2]])
  valid = np.ones((3, 8), bool)
  valid[0, :5] = False  # 3 valid < n = 4.
  valid[2, 6:] = False  # 6 valid: the sets among them.
  adv = np.asarray(set_rl.set_advantages(r, l, set_size=4, valid=valid))
  assert (adv[0] == 0).all() and (adv[2, 6:] == 0).all()
  want = ref_advantages(r[2, :6].tolist(), l[2, :6].tolist(), 4, "polychromic")
  np.testing.assert_allclose(adv[2, :6], want, atol=1e-6)


def test_sampled_sets_reproducible_and_converge():
  rs = np.random.RandomState(6)
  r = rs.rand(4, 10)
  l = rs.randint(-1, 4, (4, 10))
  exact = np.asarray(set_rl.set_advantages(r, l, set_size=4))
  a = set_rl.set_advantages(r, l, set_size=4, num_sets=30,
                            rng=jax.random.key(1))
  b = set_rl.set_advantages(r, l, set_size=4, num_sets=30,
                            rng=jax.random.key(1))
  np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  errors = []
  for k in (10, 60, 200):
    errs = [np.abs(np.asarray(set_rl.set_advantages(
        r, l, set_size=4, num_sets=k, rng=jax.random.key(s))) - exact).mean()
            for s in range(5)]
    errors.append(np.mean(errs))
  assert errors[0] > errors[1] > errors[2]
  assert errors[2] < 0.25 * errors[0]
  with pytest.raises(ValueError, match="rng"):
    set_rl.set_advantages(r, l, set_size=4, num_sets=10)


def _bandit_check(reduce, factor):
  """E[sum_i adv_i grad log pi(y_i)] vs the exact grad of E[f] (softmax)."""
  big_n, n, actions = 5, 3, 3
  theta = jnp.array([0.3, -0.5, 0.1])
  reward = np.array([1.0, 0.0, 0.6])
  label = np.array([0, 1, 0])  # Actions 0 and 2 share a strategy.
  tuples = np.array(list(itertools.product(range(actions), repeat=big_n)))
  adv = np.asarray(set_rl.set_advantages(
      reward[tuples], label[tuples], set_size=n, reduce=reduce), np.float64)
  pi = np.asarray(jax.nn.softmax(theta), np.float64)
  prob = np.prod(pi[tuples], axis=1)
  grad_logpi = np.eye(actions)[tuples] - pi  # [T, N, A]
  expected = np.einsum("t,tn,tna->a", prob, adv, grad_logpi)

  def objective_value(th):
    p = jax.nn.softmax(th)
    sets = np.array(list(itertools.product(range(actions), repeat=n)))
    f = np.array([reward[s].mean() * len(set(label[s].tolist())) / n
                  for s in sets])
    return jnp.sum(jnp.prod(p[sets], axis=1) * f)
  exact = np.asarray(jax.grad(objective_value)(theta), np.float64)
  np.testing.assert_allclose(expected, factor * exact, atol=2e-6)
  assert np.abs(exact).max() > 1e-3


def test_unbiased_up_to_scale_mean_reduction():
  _bandit_check("mean", 5 / 3 - 1)


def test_unbiased_up_to_scale_sum_reduction():
  _bandit_check("sum", math.comb(5, 3) - math.comb(4, 2))


def test_sharded_batch_matches_unsharded():
  devices = jax.devices()
  assert len(devices) == 8, "conftest forces 8 CPU devices"
  mesh = jax.make_mesh((8,), ("data",))
  rs = np.random.RandomState(7)
  r = rs.rand(16, 8).astype(np.float32)
  l = rs.randint(-1, 4, (16, 8))
  want = np.asarray(set_rl.set_advantages(r, l, set_size=4))
  sharding = jax.NamedSharding(mesh, jax.P("data"))
  r_s = jax.device_put(r, sharding)
  l_s = jax.device_put(l.astype(np.int32), sharding)
  got = set_rl.set_advantages(r_s, l_s, set_size=4)
  assert len(got.sharding.device_set) == 8
  np.testing.assert_allclose(np.asarray(got), want, atol=1e-7)


def test_bad_inputs():
  with pytest.raises(ValueError, match="set_size=9"):
    set_rl.set_advantages(np.zeros((2, 8)), np.zeros((2, 8), int), set_size=9)
  with pytest.raises(ValueError, match="labels"):
    set_rl.set_advantages(np.zeros((2, 8)), np.zeros((2, 7), int))
  with pytest.raises(ValueError, match="integers"):
    set_rl.set_advantages(np.zeros((2, 8)), np.zeros((2, 8)))
  with pytest.raises(ValueError, match="reduce"):
    set_rl.set_advantages(np.zeros((2, 8)), np.zeros((2, 8), int),
                          reduce="max")
  with pytest.raises(ValueError, match="unknown algorithm"):
    set_rl.advantages("ppo", np.zeros((2, 8)), np.zeros((2, 8), int))
