"""poly_epo.losses: the clipped surrogate vs a per-token formula, gradients,
aggregation definitions, exact micro-batch accumulation."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from poly_epo import losses


def _inputs(seed=0, b=6, l=9):
  rs = np.random.RandomState(seed)
  old = rs.randn(b, l) * 0.5 - 2.0
  new = old + rs.randn(b, l) * 0.6  # Ratios well outside [0.7, 1.3] too.
  new[0, 0] = old[0, 0] + np.log(4.0)  # Ratio 4 > dual clip 3.
  adv = rs.randn(b)
  adv[0] = -1.0
  mask = np.ones((b, l), bool)
  for i in range(b):
    mask[i, rs.randint(1, l + 1):] = False
  mask[-1] = False  # A padding row.
  return (jnp.asarray(new, jnp.float32), jnp.asarray(old, jnp.float32),
          jnp.asarray(adv, jnp.float32), jnp.asarray(mask))


def _direct_loss(new, old, adv, eps_low, eps_high, dual):
  """Per-token loss written case by case (float64)."""
  out = np.zeros(new.shape)
  for i in range(new.shape[0]):
    for t in range(new.shape[1]):
      ratio = np.exp(float(new[i, t]) - float(old[i, t]))
      a = float(adv[i])
      if a >= 0:
        out[i, t] = -a * min(ratio, 1 + eps_high)
      else:
        out[i, t] = min(-a * max(ratio, 1 - eps_low), -a * dual)
  return out


def test_surrogate_matches_direct_formula():
  new, old, adv, _ = _inputs()
  got, _ = losses.ppo_clip_per_token(new, old, adv[:, None] + 0 * new,
                                     eps_low=0.2, eps_high=0.28, dual_clip=3.0)
  want = _direct_loss(np.asarray(new), np.asarray(old), np.asarray(adv), 0.2,
                      0.28, 3.0)
  np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5, atol=1e-6)


def test_gradients_vanish_where_clipping_binds():
  new, old, adv, mask = _inputs(1)
  grad = jax.grad(lambda n: jnp.sum(losses.ppo_clip_per_token(
      n, old, adv[:, None] + 0 * n)[0]))(new)
  ratio = np.exp(np.asarray(new - old))
  a = np.asarray(adv)[:, None] + 0 * ratio
  binds = ((a > 0) & (ratio > 1.28)) | ((a < 0) & (ratio < 0.8)) | (
      (a < 0) & (ratio > 3.0))
  assert binds.any() and (~binds).any()
  g = np.asarray(grad)
  assert (g[binds] == 0).all()
  assert (np.abs(g[~binds & (a != 0)]) > 0).all()


@pytest.mark.parametrize("mode", losses.AGGREGATIONS)
def test_aggregation_definitions(mode):
  rs = np.random.RandomState(2)
  per_tok = rs.randn(5, 7)
  mask = rs.rand(5, 7) < 0.7
  mask[3] = False
  num, den = losses.aggregate(jnp.asarray(per_tok), jnp.asarray(mask), mode,
                              max_len=10)
  rows = [i for i in range(5) if mask[i].any()]
  if mode == "token-mean":
    want = per_tok[mask].sum() / mask.sum()
  elif mode == "seq-mean-token-mean":
    want = np.mean([per_tok[i][mask[i]].mean() for i in rows])
  else:
    want = per_tok[mask].sum() / (len(rows) * 10)
  assert float(num / den) == pytest.approx(want, rel=1e-5)


@pytest.mark.parametrize("mode", losses.AGGREGATIONS)
def test_micro_batch_accumulation_is_exact(mode):
  new, old, adv, mask = _inputs(3, b=8)

  def loss_and_grad(n, o, a, m):
    def f(n_):
      parts = losses.policy_loss(n_, o, a, m, aggregation=mode, max_len=9)
      return parts.numerator, parts.denominator
    (num, den), vjp = jax.vjp(f, n)
    return num, den, vjp((jnp.float32(1.0), jnp.float32(0.0)))[0]

  num, den, g_full = loss_and_grad(new, old, adv, mask)
  parts = [loss_and_grad(new[s], old[s], adv[s], mask[s])
           for s in (slice(0, 3), slice(3, 8))]
  num_acc = sum(p[0] for p in parts)
  den_acc = sum(p[1] for p in parts)
  assert float(num_acc / den_acc) == pytest.approx(float(num / den),
                                                   rel=1e-6)
  g_acc = jnp.concatenate([p[2] for p in parts]) / den_acc
  np.testing.assert_allclose(np.asarray(g_acc), np.asarray(g_full / den),
                             rtol=1e-5, atol=1e-8)


def test_metrics_kl_and_entropy():
  new, old, adv, mask = _inputs(4)
  parts = losses.policy_loss(new, old, adv, mask)
  m = {k: float(v) for k, v in parts.metrics.items()}
  ratio = np.exp(np.asarray(new - old))[np.asarray(mask)]
  assert m["ratio_max"] == pytest.approx(ratio.max(), rel=1e-5)
  assert m["ratio_min"] == pytest.approx(ratio.min(), rel=1e-5)
  assert m["ratio_mean"] == pytest.approx(ratio.mean(), rel=1e-5)
  assert m["approx_kl"] == pytest.approx(np.mean(ratio - 1 - np.log(ratio)),
                                         rel=1e-4)
  assert 0 < m["clip_frac_high"] + m["clip_frac_low"] < 1
  assert m["clip_frac_dual"] > 0
  assert m["num_tokens"] == float(np.asarray(mask).sum())
  # KL to a reference equal to the new policy adds nothing.
  same = losses.policy_loss(new, old, adv, mask, logp_ref_BL=new, kl_coef=0.1)
  assert float(same.numerator) == pytest.approx(float(parts.numerator),
                                                rel=1e-6)
  assert float(same.metrics["kl_ref"]) == pytest.approx(0.0, abs=1e-7)
  # The entropy metric is the masked token mean; the bonus subtracts
  # coef x entropy from every valid token's loss.
  ent_BL = jnp.asarray(np.random.RandomState(9).rand(*new.shape), jnp.float32)
  ent = losses.policy_loss(new, old, adv, mask, entropy_BL=ent_BL,
                           entropy_coef=0.1)
  m_np = np.asarray(mask)
  assert float(ent.metrics["entropy"]) == pytest.approx(
      np.asarray(ent_BL)[m_np].mean(), rel=1e-5)
  assert float(ent.numerator) == pytest.approx(
      float(parts.numerator) - 0.1 * np.asarray(ent_BL)[m_np].sum(), rel=1e-5)
  with pytest.raises(ValueError, match="aggregation"):
    losses.aggregate(new, mask, "sum")
