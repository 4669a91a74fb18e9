"""The paged cache's pool: reads and writes (`rollout.cache="paged"`).

Per layer and device a pool of pages `[K, NP + 1, page, H]` for keys and
one for values (kv-head-major: the layout of JAX's Pallas TPU
paged-attention kernel). Page NP is the dump page: writes of free slots go
there. A row's page table `table_NM` lists its pages in order (entry m
holds the row's slots [m * page, (m + 1) * page)); a free slot's entries
are all the dump page. Which pages a row gets is `allocator.py`'s policy.
What paging buys: no prompt padding, one copy of a prompt's KV for its k
samples, and pages only for the tokens decoded, so more slots in the same
memory (the pool is `rollout.pages`).
"""

from __future__ import annotations

import jax.numpy as jnp


def pool_shape(cfg, pages: int, page: int) -> tuple:
  """One layer's key (or value) pool: `pages` pages plus the dump page."""
  return (cfg.num_kv_heads, pages + 1, page, cfg.head_dim)


def write_prompt(pool, prefill_NKPH, table_NM):
  """Each row's prefill (values layout [N, K, P, H], slots from 0) into its
  pages; shared pages get identical data from every sample."""
  n, kh, p, h = prefill_NKPH.shape
  page = pool.shape[2]
  q = -(-p // page)
  if q > table_NM.shape[1]:
    raise ValueError(f"paged cache: a {p}-token prompt needs {q} pages, "
                     f"rows hold {table_NM.shape[1]}")
  x = jnp.pad(prefill_NKPH, ((0, 0), (0, 0), (0, q * page - p), (0, 0)))
  x = jnp.swapaxes(x.reshape(n, kh, q, page, h), 0, 1)
  return pool.at[:, table_NM[:, :q].ravel()].set(
      x.reshape(kh, n * q, page, h).astype(pool.dtype))


def write_token(pool, new_NKH, table_NM, slot_N):
  """One new key (or value) per row at its slot `slot_N`."""
  page = pool.shape[2]
  rows = jnp.arange(table_NM.shape[0])
  where = table_NM[rows, slot_N // page]
  return pool.at[:, where, slot_N % page, :].set(
      jnp.swapaxes(new_NKH, 0, 1).astype(pool.dtype))


def gather(pool, table_NM, pages: int):
  """Rows' first `pages` pages in the contiguous layout [N, K, W, H]."""
  kh, _, page, h = pool.shape
  n = table_NM.shape[0]
  x = pool[:, table_NM[:, :pages]]  # [K, N, pages, page, H]
  return jnp.swapaxes(x, 0, 1).reshape(n, kh, pages * page, h)
