"""The softmax every XLA kernel shares: one new query per row over that
row's filled cache slots, and the power-of-two window buckets.

Shape letters: N rows (decode slots), K kv heads, G query heads per kv
head, H head dim, C cache slots, W slots read. The engine keeps each row's
tokens packed from slot 0 (prompt, then response), so row n attends to
slots `[0, length_N[n])`; nothing before the prompt is padding.

Exactness: a wider read only appends masked slots, whose probabilities and
values are exact zeros, and the max is order-free; so a row's output does
not depend on how many slots the batch reads or on the other rows, up to
the reduction order of its sums. On XLA:CPU that order gives identical bits
(tests/test_engine_kernels.py, and the engines' token equality in
tests/test_engine_loop.py); elsewhere a difference is float rounding, which
can change a token only at an exact tie of the sampler's uniform draw. This
is what lets the static and continuous schedules return identical tokens.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp


def softmax_attention(q_NKGH, k_cache, v_NKCH, length_N, width: int, *,
                      keys_ch: bool):
  """Softmax over slots [0, width) of every row (float32 softmax), slots at
  or past a row's length masked (stale keys may hold anything, stale values
  anything finite). Keys [N, K, C, H] when `keys_ch`, else [N, K, H, C]."""
  h = q_NKGH.shape[-1]
  dt = q_NKGH.dtype
  vb = v_NKCH[:, :, :width].astype(dt)
  kb = (k_cache[:, :, :width] if keys_ch else k_cache[..., :width]
        ).astype(dt)
  valid = jnp.arange(width)[None] < length_N[:, None]  # [N, W]
  if keys_ch:
    s = jnp.einsum("nkgh,nkwh->nkgw", q_NKGH, kb)
  else:
    s = jnp.einsum("nkgh,nkhw->nkgw", q_NKGH, kb)
  p, l = masked_weights(s, valid[:, None, None], h**-0.5)
  o = jnp.einsum("nkgw,nkwh->nkgh", p.astype(dt), vb)
  return normalise(o, l)


def masked_weights(s, ok, scale: float):
  """Unnormalised softmax weights of scores `s` [..., W] where `ok`
  (broadcast to `s`), in float32, and their sums [...]. Masked slots weigh
  exactly 0, whatever their scores (NaN included), so their values need
  only be finite (the model writes finite values: `Attention.decode`,
  `engine.loop.insert`); a row with no slot gets weights 0."""
  s = jnp.where(ok, s.astype(jnp.float32) * scale, -jnp.inf)
  m = jnp.max(s, -1, keepdims=True)
  m = jnp.where(jnp.isfinite(m), m, 0.0)
  w = jnp.where(ok, jnp.exp(s - m), 0.0)
  return w, jnp.sum(w, -1)


def normalise(o, total):
  """Weighted values `o` [..., H] over their weights' sums [...], in the
  values' dtype."""
  return (o.astype(jnp.float32) / jnp.maximum(total, 1e-30)[..., None]
          ).astype(o.dtype)


def buckets(cache_len: int, block: int) -> tuple:
  """Block counts the window takes: powers of two up to the whole cache."""
  total = cache_len // block
  out, nb = [], 1
  while nb < total:
    out.append(nb)
    nb *= 2
  return tuple(out) + (total,)


def over_window(fn, length_N, cache_len: int, block: int, window, *args):
  """`fn(blocks, *args)` at the window a batch needs: the filled blocks up
  to the longest row, rounded up to a power of two of blocks (`lax.switch`
  over those widths: one compiled window each, no loop), or a static
  `window` of slots (the planner's cost model)."""
  if window is not None:
    return fn(min(-(-int(window) // block), cache_len // block), *args)
  sizes = buckets(cache_len, block)
  need = (jnp.max(length_N) + block - 1) // block
  index = jnp.sum(jnp.asarray(sizes[:-1]) < need)
  return jax.lax.switch(index, [functools.partial(fn, nb) for nb in sizes],
                        *args)


def largest_divisor(n: int, most: int) -> int:
  """The largest divisor of `n` up to `most` (a kernel's split of n blocks
  or pages into equal ranges)."""
  return max(d for d in range(1, min(n, most) + 1) if n % d == 0)
