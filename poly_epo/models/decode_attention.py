"""Decode attention: one new query per row over that row's filled cache slots.

Shape letters: N rows (decode slots), K kv heads, G query heads per kv head,
H head dim, C cache slots. The rollout engine keeps each row's tokens packed
from slot 0 (prompt, then response), so row n attends to slots
`[0, length_N[n])`; nothing before the prompt is padding.

Implementations (`rollout.attention`):
- "window" (default, every backend): softmax over the first blocks of
  `block` slots up to the longest row's fill, rounded up to a power of two
  of blocks (`lax.switch` over those widths: one compiled window each, no
  loop). Rows read the batch's window, not their own, but
  nothing past the filled part of the batch: a step early in a response
  reads a short window.
- "full": masked softmax over all C slots (the pre-engine sampler's cost).
- "ragged": each row reads only its own blocks (`lax.map` over rows, each with
  its own trip count). Exactly what a ragged kernel does; worth it on CPU only
  for few long rows.
- "pallas": the fast form of "ragged" on GPU, JAX's Pallas (Triton) decode
  kernel (`jax.experimental.pallas.ops.gpu.decode_attention.gqa`): each row
  reads only its own filled blocks, split over `k_splits` ranges of the cache
  that run in parallel. On CPU it runs in Pallas's interpret mode (tests
  only: slow); TPU is refused (its Pallas kernels need a paged, kv-head-major
  cache: docs/ROLLOUT.md).
- "tpu_paged": JAX's Pallas TPU paged-attention kernel; it needs the paged
  cache (`rollout.cache="paged"`, `models/paged.py`).
- "auto": "pallas" on GPU, "window" elsewhere ("tpu_paged" on TPU with the
  paged cache; the engine's `plan_spec` makes it "full" for the continuous
  engine's refilled slots on CPU: see `engine_spec.plan_spec`).

Exactness: a wider window only appends masked slots, whose probabilities
and values are exact zeros, and the max is order-free; so a row's output
does not depend on how many blocks the batch reads or on the other rows up
to the reduction order of its sums. On XLA:CPU that order gives identical
bits (tests/test_decode_attention.py, and the engines' token equality in
tests/test_engine.py); elsewhere a difference is float rounding, which can
change a token only at an exact tie of the sampler's uniform draw. This is what lets the static and
continuous engines return identical tokens.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

IMPLEMENTATIONS = ("window", "full", "ragged", "pallas", "tpu_paged",
                   "auto")


def dense(q, k_cache, v_cache, length_N, width: int, keys_ch: bool):
  """Softmax attention over slots [0, width) of every row (float32 softmax),
  slots at or past a row's length masked (stale keys may hold anything,
  stale values anything finite). Keys [N, K, C, H] when `keys_ch`, else
  [N, K, H, C]."""
  h = q.shape[-1]
  vb = v_cache[:, :, :width]
  valid = jnp.arange(width)[None] < length_N[:, None]  # [N, W]
  if keys_ch:
    s = jnp.einsum("nkgh,nkwh->nkgw", q,
                   k_cache[:, :, :width].astype(q.dtype))
  else:
    s = jnp.einsum("nkgh,nkhw->nkgw", q, k_cache[..., :width].astype(q.dtype))
  s = jnp.where(valid[:, None, None], s.astype(jnp.float32) * (h**-0.5),
                -jnp.inf)
  m = jnp.max(s, -1, keepdims=True)
  m = jnp.where(jnp.isfinite(m), m, 0.0)
  p = jnp.where(valid[:, None, None], jnp.exp(s - m), 0.0)
  # Masked slots weigh exactly 0, so their values need only be finite (the
  # model writes finite values: `Attention.decode`, `engine.insert`).
  o = jnp.einsum("nkgw,nkwh->nkgh", p.astype(q.dtype), vb.astype(q.dtype))
  l = jnp.sum(p, -1)
  return (o.astype(jnp.float32) / jnp.maximum(l, 1e-30)[..., None]
          ).astype(q.dtype)


def cache_len(v_NKCH) -> int:
  return v_NKCH.shape[2]


def buckets(cache_len: int, block: int) -> tuple:
  """Block counts the window takes: powers of two up to the whole cache."""
  total = cache_len // block
  out, nb = [], 1
  while nb < total:
    out.append(nb)
    nb *= 2
  return tuple(out) + (total,)


def _window(q, k_cache, v_cache, length_N, block: int, window, keys_ch):
  c = cache_len(v_cache)
  if window is not None:  # A static window (the planner's cost model).
    return dense(q, k_cache, v_cache, length_N,
                  -(-min(int(window), c) // block) * block, keys_ch)
  sizes = buckets(c, block)
  need = (jnp.max(length_N) + block - 1) // block
  index = jnp.sum(jnp.asarray(sizes[:-1]) < need)
  return jax.lax.switch(index, [
      lambda q, k, v, n, nb=nb: dense(q, k, v, n, nb * block, keys_ch)
      for nb in sizes], q, k_cache, v_cache, length_N)


def _ragged(q, k_cache, v_cache, length_N, block: int, keys_ch: bool):
  def one(args):
    q1, k1, v1, n1 = args
    out = _window(q1[None], k1[None], v1[None], n1[None], block, None,
                  keys_ch)
    return out[0]
  return jax.lax.map(one, (q, k_cache, v_cache, length_N))


def _splits(blocks: int, most: int = 16) -> int:
  """The largest divisor of `blocks` up to `most`: the kernel's cache ranges
  (each a whole number of blocks)."""
  return max(d for d in range(1, min(blocks, most) + 1) if blocks % d == 0)


def _pallas_gpu(q, k_cache, v_cache, length_N, block: int, keys_ch: bool):
  """JAX's Pallas GPU decode kernel over each row's own fill."""
  backend = jax.default_backend()
  if backend not in ("gpu", "cpu"):
    raise ValueError(
        f"rollout.attention='pallas' is the GPU decode kernel; on {backend} "
        "use 'window' (TPU's Pallas kernels need a paged cache)")
  from jax.experimental.pallas.ops.gpu import decode_attention as kernel
  n, kh, g, h = q.shape
  c = cache_len(v_cache)
  if block < 16:
    raise ValueError(f"rollout.attention='pallas' needs blocks of >= 16 "
                     f"slots (block={block})")
  # The kernel takes [N, C, K, H]; our [N, K, C, H] goes in swapped, and
  # XLA cancels the kernel wrapper's swap back.
  k = jnp.swapaxes(k_cache, 1, 2) if keys_ch else jnp.moveaxis(k_cache, 3, 1)
  out = kernel.gqa(q.reshape(n, kh * g, h), k, jnp.swapaxes(v_cache, 1, 2),
                   kv_seq_len=length_N.astype(jnp.int32), block_k=block,
                   k_splits=_splits(c // block),
                   interpret=backend == "cpu")
  return out.reshape(n, kh, g, h).astype(q.dtype)


def _full(q, k_cache, v_cache, length_N, keys_ch):
  return dense(q, k_cache, v_cache, length_N, cache_len(v_cache), keys_ch)


def attend_filled(q_NKGH, k_NKHC, v_NKCH, length_N, *, impl: str = "window",
                  block: int = 128, window: int | None = None,
                  keys_ch: bool = False):
  """Softmax attention of q over slots [0, length_N) of each row.

  Args:
    q_NKGH: the new token's queries, grouped by kv head.
    k_NKHC: keys, transposed ([N, K, H, C]), or [N, K, C, H] like the
      values when `keys_ch` (the engine's choice on accelerators: there a
      per-row key write is an in-place scatter; transposed keys make XLA
      TPU copy the whole cache); v_NKCH: values.
    length_N: int32 [N] filled slots per row (the new token included).
    impl: "window" | "full" | "ragged" | "pallas" | "auto" (the module
      docstring; "tpu_paged" needs the paged cache, `models/paged.py`).
    block: slots per block; C must be a multiple of it (all but "full").
    window: a static number of slots to read instead of the batch's fill
      (cost models); rows must not be longer.

  Returns:
    [N, K, G, H] in q's dtype. A row with length 0 gets zeros.
  """
  if impl not in IMPLEMENTATIONS:
    raise ValueError(f"rollout.attention={impl!r} must be one of "
                     f"{IMPLEMENTATIONS}")
  if impl == "auto":
    impl = "pallas" if jax.default_backend() == "gpu" else "window"
  if impl == "tpu_paged":
    raise ValueError("rollout.attention='tpu_paged' reads a paged cache: "
                     "set rollout.cache='paged'")
  if impl == "full":
    return _full(q_NKGH, k_NKHC, v_NKCH, length_N, keys_ch)
  if cache_len(v_NKCH) % block:
    raise ValueError(f"decode attention: cache length {cache_len(v_NKCH)} "
                     f"is not a multiple of the block ({block})")
  if impl == "pallas":
    return _pallas_gpu(q_NKGH, k_NKHC, v_NKCH, length_N, block, keys_ch)
  if impl == "ragged":
    return _ragged(q_NKGH, k_NKHC, v_NKCH, length_N, block, keys_ch)
  return _window(q_NKGH, k_NKHC, v_NKCH, length_N, block, window, keys_ch)
