"""The training forward with each prompt computed once for its N samples.

A rollout's S = B x N sequences are B prompts, each followed by N sampled
responses. The plain forward (`Transformer.__call__` on [S, P + L]) runs
every prompt N times; here each layer runs the B prompts once ([B, P]) and
the responses as [B, N x L], whose queries attend to their own prompt's keys
(broadcast over the N samples, never copied) and, causally, to their own
response's keys. Gradients flow through the shared prompt activations
exactly as through N copies (the broadcast's transpose sums them), so loss
and gradients equal the plain forward's (tests/test_shared_prefix.py);
the FLOPs of the prompt part fall N-fold.

Shapes: B prompts, N samples, P prompt width (left-padded), L response
width, D model width, K kv heads, G query heads per kv head, h head dim.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from poly_epo.models.transformer import _NEG, _REMAT_POLICIES, rope_inv_freq


def _rope(cfg, positions):
  angles = positions.astype(jnp.float32)[..., None] * \
      jnp.asarray(rope_inv_freq(cfg))
  return jnp.cos(angles), jnp.sin(angles)


def _softmax_parts(*scores):
  """Softmax over the concatenation of `scores` on the last axis, returned
  as the same parts (float32 math)."""
  cuts, total = [], 0
  for s in scores[:-1]:
    total += s.shape[-1]
    cuts.append(total)
  probs = jax.nn.softmax(jnp.concatenate(scores, -1), axis=-1)
  return jnp.split(probs, cuts, axis=-1)


def _layer(layer, x_BPD, x_BXD, rope_p, rope_r, mask_p_BPP, key_p_BP,
           key_r_BNL, n: int):
  """One decoder block on (prompt, responses); returns both outputs."""
  cfg, dt = layer.attn.cfg, x_BPD.dtype
  b, p, d = x_BPD.shape
  length = x_BXD.shape[1] // n
  kh, h = cfg.num_kv_heads, cfg.head_dim
  g = cfg.num_heads // kh
  scale = h**-0.5
  q_p, k_p, v_p = layer.attn._qkv(layer.input_norm(x_BPD), *rope_p)
  q_r, k_r, v_r = layer.attn._qkv(layer.input_norm(x_BXD), *rope_r)
  q_p = q_p.reshape(b, p, kh, g, h)
  q_r = q_r.reshape(b, n, length, kh, g, h)
  k_r = k_r.reshape(b, n, length, kh, h)
  v_r = v_r.reshape(b, n, length, kh, h)
  f32 = lambda s: s.astype(jnp.float32) * scale
  # Prompt queries: their own prompt, causally.
  s = f32(jnp.einsum("bqkgh,bskh->bkgqs", q_p, k_p))
  s = jnp.where(mask_p_BPP[:, None, None], s, _NEG)
  out_p = jnp.einsum("bkgqs,bskh->bqkgh",
                     jax.nn.softmax(s, axis=-1).astype(dt), v_p)
  # Response queries: the whole prompt, then their own response causally.
  s1 = f32(jnp.einsum("bnlkgh,bpkh->bnkglp", q_r, k_p))
  s1 = jnp.where(key_p_BP[:, None, None, None, None], s1, _NEG)
  s2 = f32(jnp.einsum("bnlkgh,bnmkh->bnkglm", q_r, k_r))
  causal = jnp.tril(jnp.ones((length, length), bool))
  s2 = jnp.where(causal & key_r_BNL[:, :, None, None, None, :], s2, _NEG)
  p1, p2 = _softmax_parts(s1, s2)
  out_r = (jnp.einsum("bnkglp,bpkh->bnlkgh", p1.astype(dt), v_p)
           + jnp.einsum("bnkglm,bnmkh->bnlkgh", p2.astype(dt), v_r))
  x_p = x_BPD + layer.attn._out(out_p.reshape(b, p, -1))
  x_r = x_BXD + layer.attn._out(out_r.reshape(b, n * length, -1))
  return layer._mlp(x_p), layer._mlp(x_r)


def _layer_remat(layer, remat: str, *args, n: int):
  if remat == "none":
    return _layer(layer, *args, n=n)
  graphdef, state = nnx.split(layer)

  def fwd(state, *a):
    return _layer(nnx.merge(graphdef, state), *a, n=n)
  return jax.checkpoint(fwd, policy=_REMAT_POLICIES[remat])(state, *args)


def response_hidden(model, prompt_BP, prompt_mask_BP, tokens_BNL, mask_BNL):
  """Final-normed hidden states [B, N, L, D] whose next-token logits score
  `tokens_BNL` (position l predicts token l: the prompt's last hidden state
  for l = 0, response position l - 1 after), in the compute dtype.

  Args:
    model: the policy (`Transformer`).
    prompt_BP: int32 left-padded prompts; prompt_mask_BP: bool real tokens
      (the last position must be real: prompts are left-padded).
    tokens_BNL: int32 the N responses of each prompt; mask_BNL: bool valid
      response tokens (a prefix of each row).
  """
  cfg = model.cfg
  dt = jnp.dtype(cfg.dtype)
  b, n, length = tokens_BNL.shape
  prompt_mask_BP = prompt_mask_BP.astype(bool)
  mask_BNL = mask_BNL.astype(bool)
  plen_B = jnp.sum(prompt_mask_BP, 1).astype(jnp.int32)
  pos_p = jnp.maximum(jnp.cumsum(prompt_mask_BP.astype(jnp.int32), 1) - 1, 0)
  pos_r = jnp.broadcast_to(plen_B[:, None, None] + jnp.arange(
      length, dtype=jnp.int32), (b, n, length))
  rope_p = _rope(cfg, pos_p)
  rope_r = _rope(cfg, pos_r.reshape(b, n * length))
  p = prompt_BP.shape[1]
  mask_p = jnp.tril(jnp.ones((p, p), bool))[None] & prompt_mask_BP[:, None, :]
  embed = model.embed[...]
  x_p = jnp.take(embed, prompt_BP, axis=0).astype(dt)
  x_r = jnp.take(embed, tokens_BNL.reshape(b, n * length), axis=0).astype(dt)
  for layer in model.layers:
    x_p, x_r = _layer_remat(layer, cfg.remat, x_p, x_r, rope_p, rope_r,
                            mask_p, prompt_mask_BP, mask_BNL, n=n)
  last = model.final_norm(x_p[:, -1:])  # [B, 1, D]: predicts token 0.
  x_r = model.final_norm(x_r.reshape(b, n, length, -1)[:, :, :-1])
  first = jnp.broadcast_to(last[:, None], (b, n, 1, last.shape[-1]))
  return jnp.concatenate([first, x_r], axis=2)
