"""Decode attention: one new query per row over that row's filled cache slots.

Shape letters: N rows (decode slots), K kv heads, G query heads per kv head,
H head dim, C cache slots. The rollout engine keeps each row's tokens packed
from slot 0 (prompt, then response), so row n attends to slots
`[0, length_N[n])`; nothing before the prompt is padding.

Implementations (`rollout.attention`):
- "window" (default, every backend): online softmax over aligned blocks of
  `block` slots, only the blocks up to the longest row's fill. Rows read the
  batch's window, not their own, but nothing past the filled part of the
  batch: a step early in a response reads a short window.
- "full": masked softmax over all C slots (the pre-engine sampler's cost).
- "ragged": each row reads only its own blocks (`lax.map` over rows, each with
  its own trip count). Exactly what a ragged kernel does; worth it on CPU only
  for few long rows; on TPU / GPU the Pallas paged / decode kernels are the
  fast form of it.

Exactness: blocks are aligned at absolute slot multiples of `block` and a
masked slot contributes exactly 0 (a block with no valid slot leaves the
running max, sum and output bit-for-bit unchanged; the first block with one
resets them), so a row's output does not depend on how many blocks the batch
reads, on the other rows or on the window. This is what lets the static and
continuous engines return identical tokens.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

IMPLEMENTATIONS = ("window", "full", "ragged")


def _block_update(carry, q_NKGH, k_NKHW, v_NKWH, valid_NW):
  """One online-softmax step over a block of W slots (float32 state)."""
  m, l, acc = carry  # [N, K, G], [N, K, G], [N, K, G, H]
  h = q_NKGH.shape[-1]
  s = jnp.einsum("nkgh,nkhw->nkgw", q_NKGH, k_NKHW.astype(q_NKGH.dtype))
  s = s.astype(jnp.float32) * (h**-0.5)
  valid = valid_NW[:, None, None, :]
  s = jnp.where(valid, s, -jnp.inf)
  m_new = jnp.maximum(m, jnp.max(s, -1))
  m_safe = jnp.where(jnp.isfinite(m_new), m_new, 0.0)
  alpha = jnp.where(jnp.isfinite(m), jnp.exp(m - m_safe), 0.0)
  p = jnp.where(valid, jnp.exp(s - m_safe[..., None]), 0.0)
  l = l * alpha + jnp.sum(p, -1)
  v_NKWH = jnp.where(valid_NW[:, None, :, None], v_NKWH, 0)  # Stale slots.
  pv = jnp.einsum("nkgw,nkwh->nkgh", p.astype(q_NKGH.dtype),
                  v_NKWH.astype(q_NKGH.dtype)).astype(jnp.float32)
  return m_new, l, acc * alpha[..., None] + pv


def _init(q_NKGH):
  n, k, g, h = q_NKGH.shape
  return (jnp.full((n, k, g), -jnp.inf, jnp.float32),
          jnp.zeros((n, k, g), jnp.float32),
          jnp.zeros((n, k, g, h), jnp.float32))


def _finish(carry, dtype):
  _, l, acc = carry
  return (acc / jnp.maximum(l, 1e-30)[..., None]).astype(dtype)


def _window(q, k_cache, v_cache, length_N, block: int, window):
  c = k_cache.shape[-1]
  if window is not None:  # A static window (the planner's cost model).
    nblk = -(-min(int(window), c) // block)
  else:
    nblk = (jnp.max(length_N) + block - 1) // block

  def body(j, carry):
    start = j * block
    kb = jax.lax.dynamic_slice_in_dim(k_cache, start, block, axis=3)
    vb = jax.lax.dynamic_slice_in_dim(v_cache, start, block, axis=2)
    valid = (start + jnp.arange(block))[None, :] < length_N[:, None]
    return _block_update(carry, q, kb, vb, valid)

  if isinstance(nblk, int):
    carry = _init(q)
    for j in range(nblk):  # Straight-line: exact compiler cost per window.
      carry = body(j, carry)
    return _finish(carry, q.dtype)
  return _finish(jax.lax.fori_loop(0, nblk, body, _init(q)), q.dtype)


def _ragged(q, k_cache, v_cache, length_N, block: int):
  def one(args):
    q1, k1, v1, n1 = args
    out = _window(q1[None], k1[None], v1[None], n1[None], block, None)
    return out[0]
  return jax.lax.map(one, (q, k_cache, v_cache, length_N))


def _full(q, k_cache, v_cache, length_N):
  c = k_cache.shape[-1]
  valid = jnp.arange(c)[None, :] < length_N[:, None]
  return _finish(_block_update(_init(q), q, k_cache, v_cache, valid), q.dtype)


def attend_filled(q_NKGH, k_NKHC, v_NKCH, length_N, *, impl: str = "window",
                  block: int = 128, window: int | None = None):
  """Softmax attention of q over slots [0, length_N) of each row.

  Args:
    q_NKGH: the new token's queries, grouped by kv head.
    k_NKHC: keys, transposed ([N, K, H, C]); v_NKCH: values.
    length_N: int32 [N] filled slots per row (the new token included).
    impl: "window" | "full" | "ragged" (see the module docstring).
    block: slots per block; C must be a multiple of it ("window", "ragged").
    window: a static number of slots to read instead of the batch's fill
      (cost models); rows must not be longer.

  Returns:
    [N, K, G, H] in q's dtype. A row with length 0 gets zeros.
  """
  if impl not in IMPLEMENTATIONS:
    raise ValueError(f"rollout.attention={impl!r} must be one of "
                     f"{IMPLEMENTATIONS}")
  if impl == "full":
    return _full(q_NKGH, k_NKHC, v_NKCH, length_N)
  if k_NKHC.shape[-1] % block:
    raise ValueError(f"decode attention: cache length {k_NKHC.shape[-1]} is "
                     f"not a multiple of the block ({block})")
  if impl == "ragged":
    return _ragged(q_NKGH, k_NKHC, v_NKCH, length_N, block)
  return _window(q_NKGH, k_NKHC, v_NKCH, length_N, block, window)
