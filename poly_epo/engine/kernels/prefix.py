"""The "prefix" kernel: decode attention over the prefix cache, where each
prompt's keys and values are held once for its k samples
(`layouts.Prefix`, the static engine's lock-step rows).

Rows come in prompt order, sample-minor: rows b*k .. b*k + k - 1 are the k
samples of prompt b. Row n attends to its prompt's slots [0, plen_n) and to
its own response slots [0, length_n - plen_n):

  keys    (prompt [B, K, H, P], responses [N, K, H, L])
  values  (prompt [B, K, P, H], responses [N, K, L, H])
  table_NM  the rows' prompt lengths plen_N (int32 [N])

The prompt part is one batched matmul per prompt with the k samples' queries
stacked (M = k x G rows instead of G), so a step reads each prompt's cache
once instead of k times: on XLA:CPU the decode step is bound by reading the
cache (bench-m: 256 rows of 48 slots read 24 slots' worth faster by 18%),
and RL prompts are long next to their responses.

Numerics: one softmax over both parts' scores side by side, the values
read in two matmuls whose outputs are added: the contiguous kernels' maths
summed in another order, so a row's probabilities differ from theirs by
float rounding only; tokens are the same unless a draw lands within that
rounding of a boundary (tests/test_engine_kernels.py,
tests/test_engine_loop.py).
"""

from __future__ import annotations

import jax.numpy as jnp

from poly_epo.engine.kernels import Kernel, register
from poly_epo.engine.kernels.dense import masked_weights, normalise

ALL = ("cpu", "gpu", "tpu")


def attend_prefix(q_NKGH, k, v, length_N, *, block, window=None,
                  keys_ch=False, table_NM=None, platform="cpu"):
  del block, window, platform
  if keys_ch:
    raise ValueError("the prefix cache keeps keys [.., H, C]: "
                     "rollout keys_ch must be off")
  (kp_BKHP, kr_NKHL), (vp_BKPH, vr_NKLH) = k, v
  plen_N = table_NM
  n, kh, g, h = q_NKGH.shape
  b, p, l = kp_BKHP.shape[0], kp_BKHP.shape[-1], kr_NKHL.shape[-1]
  j = n // b  # Samples per prompt.
  dt = q_NKGH.dtype
  q5 = q_NKGH.reshape(b, j, kh, g, h)
  s_p = jnp.einsum("bjkgh,bkhp->bjkgp", q5, kp_BKHP.astype(dt)
                   ).reshape(n, kh, g, p)
  s_r = jnp.einsum("nkgh,nkhl->nkgl", q_NKGH, kr_NKHL.astype(dt))
  # One softmax over the scores side by side ([N, K, G, P + L]): on XLA:CPU
  # one masked softmax is cheaper than two halves with a shared max.
  slot = jnp.arange(p + l)[None]
  ok = ((slot < plen_N[:, None]) |
        ((slot >= p) & (slot - p < (length_N - plen_N)[:, None])))
  w, total = masked_weights(jnp.concatenate([s_p, s_r], -1),
                            ok[:, None, None], h**-0.5)
  w = w.astype(dt)
  o = jnp.einsum("bjkgp,bkph->bjkgh", w[..., :p].reshape(b, j, kh, g, p),
                 vp_BKPH.astype(dt)).reshape(n, kh, g, h)
  o = o + jnp.einsum("nkgl,nklh->nkgh", w[..., p:], vr_NKLH.astype(dt))
  return normalise(o, total)

register(Kernel(
    "prefix", attend_prefix, runs={"prefix": ALL},
    # The static engine on CPU: its rows are lock-step and in prompt order,
    # and reading the cache is what a CPU decode step waits on.
    auto=(("cpu", "prefix", "static"),),
    # Planned as the contiguous cache's window: an upper bound on both the
    # bytes it holds and the slots it reads.
    planned_as="window"))


def write_token(cache, new_NKH, plen_N, slot_N, *, keys: bool):
  """One new key (`keys`) or value per row into the prefix cache's response
  rows: row n's token at slot `slot_N[n]` (its position) is response slot
  `slot_N - plen_N`; rows below their prompt (free slots) write nothing."""
  prompt, resp = cache
  rows = jnp.arange(new_NKH.shape[0])
  length = resp.shape[-1] if keys else resp.shape[2]
  at = slot_N - plen_N
  at = jnp.where((at >= 0) & (at < length), at, length)  # else dropped
  new = new_NKH.astype(resp.dtype)
  if keys:
    resp = resp.at[rows, :, :, at].set(new, mode="drop")
  else:
    resp = resp.at[rows, :, at, :].set(new, mode="drop")
  return prompt, resp
