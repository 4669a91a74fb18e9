"""poly_epo.packing and the packed update: every real token packed exactly
once with its position, segments never shared; the packed update's loss,
gradient norm and parameters after one optimizer step equal the padded
update's (f32, ragged prompts and responses, several mini/micro-batches, one
device and an 8-device mesh). The step is SGD with lr 1, so the parameters
after it differ exactly by the gradients (Adam would magnify rounding in
near-zero gradients)."""

import jax
import optax
import numpy as np
import pytest
from flax import nnx

from poly_epo import packing, sharding, update
from poly_epo.models import init_model, preset

P_, L_ = 6, 9


def _batch(s=16, seed=0):
  rs = np.random.RandomState(seed)
  tokens = rs.randint(3, 40, (s, P_ + L_)).astype(np.int32)
  attn = np.ones((s, P_ + L_), bool)
  mask = np.zeros((s, L_), bool)
  for i in range(s):
    attn[i, :rs.randint(0, P_)] = False  # Left padding.
    n = rs.randint(0, L_ + 1)  # Responses of 0..L tokens.
    mask[i, :n] = True
    attn[i, P_:] = mask[i]
  tokens[~attn] = 0
  old = np.where(mask, -rs.rand(s, L_) * 3, 0).astype(np.float32)
  adv = rs.randn(s).astype(np.float32)
  return tokens, attn, mask, old, adv


@pytest.mark.parametrize("mini,micro,devices", [(1, 1, 1), (2, 2, 2),
                                                (1, 2, 4)])
def test_every_real_token_is_packed_once_in_its_own_segment(mini, micro,
                                                            devices):
  tokens, attn, mask, _, _ = _batch()
  pk = packing.pack(tokens, attn, mask, minibatches=mini,
                    microbatches=micro, devices=devices)
  assert pk.real_tokens == int(attn.sum())
  n_real = int((pk.segment_RW > 0).sum())
  assert n_real == pk.real_tokens
  # Rebuild every sequence from its row and segment.
  got = []
  for row in range(pk.tokens_RW.shape[0]):
    for seg in set(pk.segment_RW[row].tolist()) - {0}:
      where = pk.segment_RW[row] == seg
      np.testing.assert_array_equal(pk.position_RW[row][where],
                                    np.arange(where.sum()))
      got.append(tuple(pk.tokens_RW[row][where]))
  want = [tuple(tokens[i][attn[i]]) for i in range(len(tokens))]
  assert sorted(got) == sorted(want)
  assert pk.tokens_RW.shape[0] <= len(tokens)
  if mini * micro * devices == 1:  # 16 sequences in one group: fewer rows.
    assert pk.tokens_RW.shape[0] < len(tokens)


def _update_fn(model, mesh, packed, mini, micro):
  graphdef, params, _ = nnx.split(model, nnx.Param, ...)
  tx = optax.sgd(1.0)  # params - gradient: the step compares gradients.
  p_sh = sharding.tree_shardings(params, mesh)
  params = jax.device_put(jax.tree.map(np.array, params), p_sh)  # Donated.
  opt = tx.init(params)
  o_sh = sharding.tree_shardings(opt, mesh)
  fn = update.make_update_fn(graphdef, tx, mesh, p_sh, o_sh, prompt_len=P_,
                             num_minibatches=mini, num_microbatches=micro,
                             packing=packed, recompute_old_logprobs=True)
  return fn, params, jax.device_put(opt, o_sh)


@pytest.mark.parametrize("shape,mini,micro", [((1, 1, 1), 1, 1),
                                              ((1, 1, 1), 2, 2),
                                              ((2, 2, 2), 1, 2)])
def test_packed_update_equals_padded_update(shape, mini, micro):
  mesh = sharding.make_mesh(*shape, devices=jax.devices()[:np.prod(shape)])
  model = init_model(preset("tiny", vocab_size=40), seed=2)
  tokens, attn, mask, old, adv = _batch()
  put = lambda tree: sharding.host_local_to_global(mesh, tree)
  fn, params, opt = _update_fn(model, mesh, False, mini, micro)
  p_pad, _, m_pad = fn(params, opt, put(update.RolloutBatch(
      tokens, attn, mask, old, adv)))
  pk = packing.pack(tokens, attn, mask, minibatches=mini, microbatches=micro,
                    devices=sharding.batch_shards(mesh))
  fn, params, opt = _update_fn(model, mesh, True, mini, micro)
  p_pk, _, m_pk = fn(params, opt, put(update.PackedBatch(
      pk.tokens_RW, pk.segment_RW, pk.position_RW, pk.index_SL, mask, old,
      adv)))
  for name in ("loss", "grad_norm", "sampler_logp_abs_diff", "entropy",
               "num_tokens"):
    np.testing.assert_allclose(float(m_pk[name]), float(m_pad[name]),
                               rtol=1e-5, atol=1e-6, err_msg=name)
  for a, b in zip(jax.tree.leaves(p_pk), jax.tree.leaves(p_pad)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-5)


def test_fixed_rows_too_few_raise():
  tokens, attn, mask, _, _ = _batch()
  with pytest.raises(ValueError, match="rows per group"):
    packing.pack(tokens, attn, mask, rows=1)
