"""poly_epo.set_rl.objectives: each objective against its plain definition."""

import jax.numpy as jnp
import numpy as np
import pytest

from poly_epo import set_rl
from set_rl_reference import DEG, ref_objective


def test_degenerate_constant_matches_reference():
  assert set_rl.DEGENERATE == DEG


@pytest.mark.parametrize("name", ["mean", "max", "polychromic"])
def test_objectives_match_definitions(name):
  rs = np.random.RandomState(0)
  for _ in range(50):
    n = rs.randint(1, 7)
    r = rs.rand(n).round(2)
    l = rs.randint(-1, 3, n)
    got = float(set_rl.get_objective(name)(jnp.asarray(r), jnp.asarray(l)))
    assert got == pytest.approx(ref_objective(name, r.tolist(), l.tolist()),
                                abs=1e-6)


def test_polychromic_require_multiple_clusters():
  f = set_rl.get_objective("polychromic", require_multiple_clusters=True)
  r = jnp.ones(4)
  assert float(f(r, jnp.array([3, 3, 3, DEG]))) == 0.0
  assert float(f(r, jnp.array([3, 4, 3, DEG]))) == pytest.approx(0.5)
  # Off by default: one strategy still scores 1/n.
  assert float(set_rl.get_objective("polychromic")(
      r, jnp.array([3, 3, 3, DEG]))) == pytest.approx(0.25)


def test_distinct_labels_ignores_degenerate():
  assert int(set_rl.distinct_labels(jnp.array([DEG, DEG, 5, 5, 7]))) == 2
  assert int(set_rl.distinct_labels(jnp.array([DEG, DEG]))) == 0


def test_registry_and_user_callables():
  @set_rl.register_objective("test_min")
  def set_min(rewards, labels):
    del labels
    return jnp.min(rewards)
  assert "test_min" in set_rl.objective_names()
  r = jnp.array([[0.2, 0.9, 0.5, 0.7]])
  l = jnp.zeros((1, 4), jnp.int32)
  by_name = set_rl.set_advantages(r, l, objective="test_min", set_size=2)
  by_fn = set_rl.set_advantages(r, l, objective=set_min, set_size=2)
  np.testing.assert_array_equal(np.asarray(by_name), np.asarray(by_fn))
  assert float(jnp.abs(by_name).sum()) > 0
  with pytest.raises(ValueError, match="unknown set objective 'nope'"):
    set_rl.get_objective("nope")
  # Same options -> the same bound function (one compile, not one per call).
  assert set_rl.get_objective("polychromic", require_multiple_clusters=True) \
      is set_rl.get_objective("polychromic", require_multiple_clusters=True)


@pytest.mark.parametrize("name,options", [
    ("mean", {}), ("max", {}), ("polychromic", {}),
    ("polychromic", {"require_multiple_clusters": True})])
def test_batched_forms_equal_per_set_forms(name, options):
  fn = set_rl.get_objective(name, **options)
  per_set = lambda r, l: fn(r, l)  # Same maths, no whole-table fast path.
  rs = np.random.RandomState(9)
  r = rs.rand(5, 9).astype(np.float32)
  l = rs.randint(-1, 4, (5, 9))
  fast = set_rl.set_advantages(r, l, objective=name, set_size=4, **options)
  slow = set_rl.set_advantages(r, l, objective=per_set, set_size=4)
  np.testing.assert_allclose(np.asarray(fast), np.asarray(slow), atol=1e-7)


def test_distinct_per_set_bitmask_and_matmul_paths_agree():
  from poly_epo.set_rl.objectives import distinct_per_set
  rs = np.random.RandomState(10)
  for big_n in (6, 32, 40):  # 40 > 32 takes the matmul path.
    table = set_rl.subset_table(big_n, 3, num_sets=50, seed=0)
    members = np.zeros((len(table), big_n), np.float32)
    np.put_along_axis(members, table, 1.0, axis=1)
    labels = rs.randint(-1, 6, (4, big_n))
    got = np.asarray(distinct_per_set(jnp.asarray(table), jnp.asarray(members),
                                      jnp.asarray(labels)))
    want = [[len({labels[b, i] for i in s if labels[b, i] != DEG})
             for s in table] for b in range(4)]
    np.testing.assert_array_equal(got, want)
