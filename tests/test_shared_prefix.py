"""poly_epo.models.shared_prefix: each prompt once for its N samples gives
the plain forward's log-probs and gradients (the reference: the same
sequences written out in full, [B x N, P + L])."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from poly_epo import logprobs
from poly_epo.models import init_model, preset, shared_prefix


@pytest.mark.parametrize("remat,qwen", [("none", True), ("full", False)])
def test_logprobs_and_gradients_equal_the_plain_forward(remat, qwen):
  over = dict(vocab_size=64, remat=remat)
  if not qwen:  # A Llama layout: no q/k norm, untied head.
    over.update(qk_norm=False, tie_embeddings=False, model_type="llama")
  model = init_model(preset("tiny", **over), seed=0)
  b, n, p, length = 2, 3, 7, 5
  rs = np.random.RandomState(0)
  prompt = rs.randint(1, 64, (b, p))
  pmask = np.ones((b, p), bool)
  pmask[0, :3] = False  # Left padding.
  tokens = rs.randint(1, 64, (b, n, length))
  mask = np.arange(length)[None, None] < rs.randint(1, length + 1,
                                                    (b, n))[..., None]
  graphdef, params = nnx.split(model, nnx.Param)

  def shared(params):
    m = nnx.merge(graphdef, params)
    h = shared_prefix.response_hidden(m, jnp.asarray(prompt),
                                      jnp.asarray(pmask),
                                      jnp.asarray(tokens), jnp.asarray(mask))
    return logprobs.sequence_logprobs(h.reshape(b * n, length, -1), m.head(),
                                      jnp.asarray(tokens.reshape(-1,
                                                                 length)))[0]

  def plain(params):
    m = nnx.merge(graphdef, params)
    t = np.concatenate([np.repeat(prompt, n, 0), tokens.reshape(-1, length)],
                       1)
    a = np.concatenate([np.repeat(pmask, n, 0), mask.reshape(-1, length)], 1)
    return logprobs.completion_logprobs(m, jnp.asarray(t), jnp.asarray(a),
                                        p)[0]

  valid = mask.reshape(-1, length)
  shared, plain = jax.jit(shared), jax.jit(plain)
  got, want = shared(params), plain(params)
  np.testing.assert_allclose(np.where(valid, got, 0), np.where(valid, want, 0),
                             atol=1e-5)
  weights = jnp.asarray(rs.randn(b * n, length) * valid)
  g1 = jax.jit(jax.grad(lambda q: jnp.sum(shared(q) * weights)))(params)
  g0 = jax.jit(jax.grad(lambda q: jnp.sum(plain(q) * weights)))(params)
  for x, y in zip(jax.tree.leaves(g1), jax.tree.leaves(g0)):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y),
                               atol=2e-5 * float(np.abs(y).max()) + 1e-7)
