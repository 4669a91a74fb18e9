"""poly_epo.logprobs: against a float64 NumPy log-softmax, and chunked =
unchunked (values and gradients)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from poly_epo import logprobs
from poly_epo.models import init_model, preset


def _np_logsoftmax(x):
  x = np.asarray(x, np.float64)
  m = x.max(-1, keepdims=True)
  return x - m - np.log(np.exp(x - m).sum(-1, keepdims=True))


def test_token_logprobs_and_entropy_match_numpy():
  rs = np.random.RandomState(5)
  logits = jnp.asarray(rs.randn(2, 3, 6), jnp.float32)
  tokens = jnp.asarray(rs.randint(0, 6, (2, 3)))
  ref = _np_logsoftmax(np.asarray(logits) / 0.5)
  want = np.take_along_axis(ref, np.asarray(tokens)[..., None], -1)[..., 0]
  got = logprobs.token_logprobs(logits, tokens, temperature=0.5)
  np.testing.assert_allclose(np.asarray(got), want, atol=1e-5)
  lp, ent = logprobs.logprobs_and_entropy(logits, tokens, 0.5)
  np.testing.assert_allclose(np.asarray(lp), want, atol=1e-5)
  np.testing.assert_allclose(np.asarray(ent),
                             -(np.exp(ref) * ref).sum(-1), atol=1e-5)


@pytest.mark.parametrize("chunk", [1, 3, 4, 7, 0])
def test_chunked_sequence_logprobs_equal_full(chunk):
  rs = np.random.RandomState(0)
  hidden = jnp.asarray(rs.randn(3, 7, 8), jnp.float32)
  head = jnp.asarray(rs.randn(11, 8), jnp.float32)
  tokens = jnp.asarray(rs.randint(0, 11, (3, 7)))
  full_logits = np.asarray(hidden) @ np.asarray(head).T / 0.7
  ref = _np_logsoftmax(full_logits)
  want = np.take_along_axis(ref, np.asarray(tokens)[..., None], -1)[..., 0]
  lp, ent = logprobs.sequence_logprobs(hidden, head, tokens, temperature=0.7,
                                       chunk=chunk)
  np.testing.assert_allclose(np.asarray(lp), want, atol=1e-5)
  np.testing.assert_allclose(np.asarray(ent), -(np.exp(ref) * ref).sum(-1),
                             atol=1e-5)

  def f(h, w, c):
    lp, ent = logprobs.sequence_logprobs(h, w, tokens, temperature=0.7,
                                         chunk=c)
    return jnp.sum(lp * jnp.arange(7)) + 0.3 * jnp.sum(ent)
  g_chunk = jax.grad(f, argnums=(0, 1))(hidden, head, chunk)
  g_full = jax.grad(f, argnums=(0, 1))(hidden, head, 0)
  for a, b in zip(g_chunk, g_full):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-5)


def test_completion_logprobs_equal_full_forward_logits():
  model = init_model(preset("tiny", vocab_size=29), seed=1)
  rs = np.random.RandomState(2)
  tokens = jnp.asarray(rs.randint(1, 29, (4, 9)), jnp.int32)
  attn = np.ones((4, 9), bool)
  attn[1, :2] = False  # Left padding of the prompt (width 4).
  attn = jnp.asarray(attn)
  logits = np.asarray(model(tokens, None, attn))
  ref = _np_logsoftmax(logits[:, 3:8])
  want = np.take_along_axis(ref, np.asarray(tokens)[:, 4:, None], -1)[..., 0]
  lp, _ = logprobs.completion_logprobs(model, tokens, attn, 4, chunk=2)
  np.testing.assert_allclose(np.asarray(lp), want, atol=1e-5)
