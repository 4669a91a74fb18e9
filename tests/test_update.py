"""poly_epo.update: sharded == single device, micro-batching is exact, NaN
updates are skipped."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from poly_epo import sharding, update
from poly_epo.models import init_model, preset

P_LEN, L_LEN, S = 6, 5, 32


def _batch(vocab, seed=0, nan=False):
  rs = np.random.RandomState(seed)
  tokens = rs.randint(3, vocab, (S, P_LEN + L_LEN)).astype(np.int32)
  attn = np.ones((S, P_LEN + L_LEN), bool)
  attn[::3, :2] = False  # Some left padding.
  mask = np.ones((S, L_LEN), bool)
  mask[::4, 3:] = False  # Some early EOS.
  old = (-2.0 + 0.3 * rs.randn(S, L_LEN)).astype(np.float32)
  adv = rs.randn(S).astype(np.float32)
  if nan:
    adv[5] = np.nan
  return update.RolloutBatch(jnp.asarray(tokens), jnp.asarray(attn),
                             jnp.asarray(mask), jnp.asarray(old),
                             jnp.asarray(adv))


def _run(mesh_shape, micro=1, mini=2, nan=False, seed=0, tx=None):
  devices = jax.devices()[:int(np.prod(mesh_shape))]
  mesh = sharding.make_mesh(*mesh_shape, devices=devices)
  model = init_model(preset("tiny", vocab_size=40), seed=seed)
  graphdef, params = nnx.split(model, nnx.Param)
  tx = tx or update.make_optimizer(1e-3, weight_decay=0.01, grad_clip=1.0)
  params_sh = sharding.tree_shardings(params, mesh)
  params = jax.device_put(params, params_sh)
  opt_state = tx.init(params)
  opt_sh = sharding.tree_shardings(opt_state, mesh)
  opt_state = jax.device_put(opt_state, opt_sh)
  fn = update.make_update_fn(graphdef, tx, mesh, params_sh, opt_sh,
                             prompt_len=P_LEN, num_minibatches=mini,
                             num_microbatches=micro)
  batch = jax.device_put(_batch(40, nan=nan), jax.tree.map(
      lambda x: sharding.batch_sharding(mesh, x.ndim), _batch(40)))
  new_params, _, metrics = fn(params, opt_state, batch)
  before = nnx.split(init_model(preset("tiny", vocab_size=40), seed=seed),
                     nnx.Param)[1]
  return new_params, metrics, before


def _flat(tree):
  return np.concatenate([np.asarray(x).ravel() for x in jax.tree.leaves(tree)])


def test_sharded_mesh_equals_single_device():
  # SGD: the update is linear in the gradient, so this compares gradients.
  # (Adam's first step is ~lr * sign(g), which turns float noise in the
  # handful of near-zero gradients into 1e-5-sized parameter differences.)
  import optax
  tx = optax.chain(optax.clip_by_global_norm(1.0), optax.sgd(0.5))
  p1, m1, before = _run((1, 1, 1), tx=tx)
  p8, m8, _ = _run((2, 2, 2), tx=tx)
  assert float(m1["loss"]) == pytest.approx(float(m8["loss"]), abs=1e-5)
  np.testing.assert_allclose(_flat(p8), _flat(p1), atol=1e-5)
  assert np.abs(_flat(p1) - _flat(before)).max() > 1e-4  # It did update.
  leaf = jax.tree.leaves(p8)[0]
  assert len(leaf.sharding.device_set) == 8


def test_microbatch_accumulation_equals_full_batch():
  import optax
  tx = optax.sgd(0.5)  # Linear in the gradient (see above).
  p1, m1, _ = _run((1, 1, 1), micro=1, tx=tx)
  p4, m4, _ = _run((1, 1, 1), micro=4, tx=tx)
  np.testing.assert_allclose(_flat(p4), _flat(p1), atol=1e-6)
  assert float(m1["loss"]) == pytest.approx(float(m4["loss"]), rel=1e-5)


def test_nan_minibatch_is_skipped_and_counted():
  p_nan, m_nan, before = _run((1, 1, 1), mini=2, nan=True)
  assert int(m_nan["skipped"]) == 1  # Row 5 sits in minibatch 5 % 2 = 1.
  p_ok, m_ok, _ = _run((1, 1, 1), mini=2)
  assert int(m_ok["skipped"]) == 0
  assert np.isfinite(_flat(p_nan)).all()
  assert not np.allclose(_flat(p_nan), _flat(before))  # 1st minibatch ran.
  assert not np.allclose(_flat(p_nan), _flat(p_ok))


def test_an_update_that_overflows_the_weights_is_skipped():
  """lr 1e39 (past float32's range): the loss and gradient are finite, the
  new weights are not. The update is skipped (and counted) like a
  non-finite loss, so such weights are never kept or checkpointed."""
  p, m, before = _run((1, 1, 1), mini=1, tx=update.make_optimizer(
      1e39, weight_decay=0.01, grad_clip=1.0))
  assert np.isfinite(float(m["loss"])) and np.isfinite(float(m["grad_norm"]))
  assert int(m["skipped"]) == 1 and int(m["skipped_nonfinite_weights"]) == 1
  np.testing.assert_array_equal(_flat(p), _flat(before))


def _update_once(cfg, batch, *, lr=1e-6, recompute=False, mini=1, tx=None):
  mesh = sharding.make_mesh(1, 1, 1, devices=jax.devices()[:1])
  graphdef, params = nnx.split(init_model(cfg, seed=0), nnx.Param)
  tx = tx or update.make_optimizer(lr, weight_decay=0.0, grad_clip=1e9)
  params_sh = sharding.tree_shardings(params, mesh)
  opt_state = tx.init(params)
  opt_sh = sharding.tree_shardings(opt_state, mesh)
  before = jax.tree.map(np.asarray, params)
  fn = update.make_update_fn(graphdef, tx, mesh, params_sh, opt_sh,
                             prompt_len=P_LEN, num_minibatches=mini,
                             recompute_old_logprobs=recompute)
  new, _, metrics = fn(params, opt_state, batch)
  return before, jax.tree.map(np.asarray, new), metrics


def test_lr_1e6_adamw_moves_f32_master_weights_not_bf16_weights():
  batch = _batch(40)
  f32_master = preset("tiny", vocab_size=40, param_dtype="float32",
                      dtype="bfloat16")
  before, after, _ = _update_once(f32_master, batch)
  changed = np.mean(_flat(after) != _flat(before))
  assert changed > 0.9  # Every weight with a gradient moves by ~1e-6.
  bf16 = preset("tiny", vocab_size=40, param_dtype="bfloat16",
                dtype="bfloat16")
  before, after, _ = _update_once(bf16, batch)
  changed_bf16 = np.mean(_flat(after) != _flat(before))
  assert changed_bf16 < 0.02  # Rounded away (bar a few near-zero weights).


def test_bf16_compute_loss_is_close_to_f32():
  batch = _batch(40)
  _, _, m32 = _update_once(preset("tiny", vocab_size=40), batch)
  _, _, m16 = _update_once(preset("tiny", vocab_size=40, dtype="bfloat16"),
                           batch)
  assert float(m16["loss"]) == pytest.approx(float(m32["loss"]), rel=0.03,
                                             abs=2e-3)
  assert float(m16["entropy"]) == pytest.approx(float(m32["entropy"]),
                                                rel=0.02)


def test_recomputed_old_logprobs_replace_the_samplers():
  from poly_epo import logprobs
  cfg = preset("tiny", vocab_size=40)
  batch = _batch(40)
  model = init_model(cfg, seed=0)
  true_old, _ = logprobs.completion_logprobs(model, batch.tokens_ST,
                                             batch.attn_ST, P_LEN)
  exact = batch._replace(old_logp_SL=jnp.where(batch.mask_SL, true_old, 0.0))
  import optax
  sgd = optax.sgd(0.5)  # Linear in the gradient (see above).
  _, ref, m_ref = _update_once(cfg, exact, tx=sgd)
  _, got, m_got = _update_once(cfg, batch, tx=sgd, recompute=True)
  np.testing.assert_allclose(_flat(got), _flat(ref), atol=1e-6)
  assert float(m_got["ratio_mean"]) == pytest.approx(1.0, abs=1e-6)
  assert float(m_got["sampler_logp_abs_diff"]) > 0.1  # The batch's were off.


def test_on_policy_update_equals_exact_old_logprobs_without_a_second_pass():
  # One minibatch: the old log-probs are the forward's own, detached. The
  # reference is the plain update given the exact current log-probs.
  from poly_epo import logprobs
  import optax
  cfg = preset("tiny", vocab_size=40, dtype="bfloat16")
  batch = _batch(40)
  mesh = sharding.make_mesh(1, 1, 1, devices=jax.devices()[:1])
  graphdef, params = nnx.split(init_model(cfg, seed=0), nnx.Param)
  sgd = optax.sgd(0.5)
  sh = sharding.tree_shardings(params, mesh)
  opt_sh = sharding.tree_shardings(sgd.init(params), mesh)
  on = update.make_update_fn(graphdef, sgd, mesh, sh, opt_sh,
                             prompt_len=P_LEN, on_policy=True,
                             recompute_old_logprobs=True)
  new, _, m = on(params, sgd.init(params), batch)
  # bf16 compute: ratio exactly 1 (a recomputed pass gives ~0.95-1.06).
  assert float(m["ratio_min"]) == 1.0 == float(m["ratio_max"])
  assert float(m["sampler_logp_abs_diff"]) > 0.1
  model = init_model(cfg, seed=0)
  cur, _ = logprobs.completion_logprobs(model, batch.tokens_ST,
                                        batch.attn_ST, P_LEN)
  exact = batch._replace(old_logp_SL=jnp.where(batch.mask_SL, cur, 0.0))
  _, ref, m_ref = _update_once(cfg, exact, tx=sgd)
  np.testing.assert_allclose(_flat(new), _flat(ref), atol=2e-3)
  assert float(m["loss"]) == pytest.approx(float(m_ref["loss"]), abs=1e-3)


def _shared(batch, n):
  b = batch.tokens_ST.shape[0] // n
  first = np.arange(b) * n
  rs = lambda x: np.asarray(x).reshape(b, n, *x.shape[1:])
  return update.SharedBatch(
      np.asarray(batch.tokens_ST)[first, :P_LEN],
      np.asarray(batch.attn_ST)[first, :P_LEN],
      rs(np.asarray(batch.tokens_ST)[:, P_LEN:]), rs(batch.mask_SL),
      rs(batch.old_logp_SL), rs(batch.adv_S))


def _with_shared_prompts(batch, n):
  """The batch with each group of n rows sharing its first row's prompt."""
  t, a = np.asarray(batch.tokens_ST).copy(), np.asarray(batch.attn_ST).copy()
  for s in range(t.shape[0]):
    t[s, :P_LEN], a[s, :P_LEN] = t[s - s % n, :P_LEN], a[s - s % n, :P_LEN]
  return batch._replace(tokens_ST=jnp.asarray(t), attn_ST=jnp.asarray(a))


@pytest.mark.parametrize("mesh_shape,mini,micro", [
    ((1, 1, 1), 1, 1), ((1, 1, 1), 2, 2), ((2, 2, 1), 1, 2)])
def test_shared_prefix_update_equals_the_plain_update(mesh_shape, mini,
                                                      micro):
  import optax
  n = 4
  batch = _with_shared_prompts(_batch(40), n)
  devices = jax.devices()[:int(np.prod(mesh_shape))]
  mesh = sharding.make_mesh(*mesh_shape, devices=devices)
  graphdef, params = nnx.split(init_model(preset("tiny", vocab_size=40),
                                          seed=0), nnx.Param)
  sgd = optax.sgd(0.5)
  sh = sharding.tree_shardings(params, mesh)
  opt_sh = sharding.tree_shardings(sgd.init(params), mesh)
  # The shared layout puts prompt b in minibatch b % mini, micro-batch
  # (b // mini) % micro; the plain one puts row s by s instead. Reorder the
  # plain rows so both updates see the same groups.
  s_total, b_total = batch.adv_S.shape[0], batch.adv_S.shape[0] // n
  group = lambda i: (i % mini, (i // mini) % micro)
  slots = {g: [s for s in range(s_total) if group(s) == g]
           for g in {group(s) for s in range(s_total)}}
  order = np.empty(s_total, int)
  for b in range(b_total):
    for j in range(n):
      order[slots[group(b)].pop(0)] = b * n + j
  plain = jax.tree.map(lambda x: jnp.asarray(np.asarray(x)[order]), batch)
  out = {}
  for shared in (False, True):
    fn = update.make_update_fn(graphdef, sgd, mesh, sh, opt_sh,
                               prompt_len=P_LEN, num_minibatches=mini,
                               num_microbatches=micro, shared_prefix=shared)
    b = _shared(batch, n) if shared else plain
    b = jax.device_put(b, jax.tree.map(
        lambda x: sharding.batch_sharding(mesh, x.ndim), b))
    p = jax.device_put(jax.tree.map(jnp.array, params), sh)
    out[shared] = fn(p, sgd.init(p), b)
  (p0, _, m0), (p1, _, m1) = out[False], out[True]
  np.testing.assert_allclose(_flat(p1), _flat(p0), atol=1e-5)
  assert float(m1["loss"]) == pytest.approx(float(m0["loss"]), abs=1e-6)
  assert np.abs(_flat(p1) - _flat(params)).max() > 1e-4  # It did update.
  assert float(m1["num_tokens"]) == float(m0["num_tokens"])
