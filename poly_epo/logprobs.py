"""Token log-probabilities and entropies: the one helper behind the sampler,
the PPO loss and pretraining.

`token_logprobs` works on logits already in hand (the sampler's one decode
step). `sequence_logprobs` starts from the final hidden states and the output
projection and walks the sequence in chunks of `chunk` positions, each under
`jax.checkpoint`, so the float32 [S, L, V] logits of a whole rollout never
exist at once (V = 151,936 for Qwen3: 4096 tokens x 8 sequences of them are
20 GB), neither in the forward nor in the backward pass.

Shapes: S sequences, L positions, V vocabulary, D model width.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def token_logprobs(logits_SLV, tokens_SL, temperature: float = 1.0):
  """log softmax(logits / temperature)[token]: float32, shape of `tokens`."""
  logp = jax.nn.log_softmax(logits_SLV.astype(jnp.float32) / temperature, -1)
  return jnp.take_along_axis(logp, tokens_SL[..., None], -1)[..., 0]


def logprobs_and_entropy(logits_SLV, tokens_SL, temperature: float = 1.0,
                         entropy_grad: bool = True):
  """(log-prob of each token, entropy of each position's distribution), both
  float32 [S, L]: logp = z[token] - logsumexp(z), z = logits / temperature,
  so no [S, L, V] log-softmax is kept for the backward pass. Without
  `entropy_grad` the entropy (a metric unless an entropy bonus is on) is
  computed outside the gradient: its [S, L, V] backward costs as much as
  the log-probs' own (~0.4 s of a 1.4 s head backward at V = 49,152 and
  1,024 tokens on 2 CPU cores)."""
  z = logits_SLV.astype(jnp.float32) / temperature
  lse = jax.nn.logsumexp(z, -1)
  logp = jnp.take_along_axis(z, tokens_SL[..., None], -1)[..., 0] - lse
  if not entropy_grad:
    z, lse = jax.lax.stop_gradient(z), jax.lax.stop_gradient(lse)
  ent = lse - jnp.sum(jnp.exp(z - lse[..., None]) * z, -1)
  return logp, ent


def sequence_logprobs(hidden_SLD, head_VD, tokens_SL, *,
                      temperature: float = 1.0, chunk: int = 0,
                      entropy_grad: bool = True):
  """Log-probs and entropies of `tokens_SL` from hidden states.

  Args:
    hidden_SLD: final-normed hidden states whose next-token logits are
      hidden @ head.T (position l predicts tokens_SL[:, l]).
    head_VD: the output projection (embedding when tied).
    tokens_SL: int32 targets.
    temperature: logits are divided by it (> 0).
    chunk: positions per chunk; 0 or >= L computes all at once.
    entropy_grad: differentiate the entropies too (an entropy bonus).

  Returns:
    (logp_SL, entropy_SL) float32.
  """
  s, length, d = hidden_SLD.shape
  head = head_VD.astype(hidden_SLD.dtype)

  def one(h_SCD, t_SC):
    logits = jnp.einsum("scd,vd->scv", h_SCD, head).astype(jnp.float32)
    return logprobs_and_entropy(logits, t_SC, temperature, entropy_grad)

  if not chunk or chunk >= length:
    return one(hidden_SLD, tokens_SL)
  n_chunks = -(-length // chunk)
  pad = n_chunks * chunk - length
  h = jnp.pad(hidden_SLD, ((0, 0), (0, pad), (0, 0)))
  t = jnp.pad(tokens_SL, ((0, 0), (0, pad)))
  h = h.reshape(s, n_chunks, chunk, d).swapaxes(0, 1)  # [n, S, C, D]
  t = t.reshape(s, n_chunks, chunk).swapaxes(0, 1)

  @jax.checkpoint
  def body(_, xs):
    return None, one(*xs)

  _, (logp, ent) = jax.lax.scan(body, None, (h, t))
  unchunk = lambda x: x.swapaxes(0, 1).reshape(s, -1)[:, :length]
  return unchunk(logp), unchunk(ent)


def completion_logprobs(model, tokens_ST, attn_ST, prompt_len: int, *,
                        temperature: float = 1.0, chunk: int = 0,
                        entropy_grad: bool = True):
  """Teacher-forced (logp, entropy) [S, L] of the completion part of
  `tokens_ST` (a left-padded prompt of width `prompt_len`, then L tokens),
  from one forward pass of `model`."""
  length = tokens_ST.shape[1] - prompt_len
  hidden = model(tokens_ST, None, attn_ST, hidden_only=True)
  hidden_L = hidden[:, prompt_len - 1:prompt_len - 1 + length]
  return sequence_logprobs(hidden_L, model.head(), tokens_ST[:, prompt_len:],
                           temperature=temperature, chunk=chunk,
                           entropy_grad=entropy_grad)


def packed_completion_logprobs(model, tokens_RW, segment_RW, position_RW,
                               index_SL, *, shards: int = 1,
                               temperature: float = 1.0, chunk: int = 0,
                               entropy_grad: bool = True):
  """(logp, entropy) [S, L] of response tokens from one forward over packed
  rows (poly_epo/packing.py): every packed position predicts the next token
  of its row; `index_SL` picks, per device (`shards` contiguous blocks of
  rows and of sequences), the position predicting each response token."""
  hidden = model(tokens_RW, position_RW, segment_RW > 0, hidden_only=True,
                 segment_ids_BT=segment_RW)
  targets = jnp.pad(tokens_RW[:, 1:], ((0, 0), (0, 1)))
  logp_RW, ent_RW = sequence_logprobs(hidden, model.head(), targets,
                                      temperature=temperature, chunk=chunk,
                                      entropy_grad=entropy_grad)
  s, length = index_SL.shape
  pick = jax.vmap(lambda x, i: jnp.take(x, i, axis=0))
  index = index_SL.reshape(shards, s // shards, length)
  out = [pick(x.reshape(shards, -1), index).reshape(s, length)
         for x in (logp_RW, ent_RW)]
  return out[0], out[1]
