"""A paged KV cache for the rollout engine (`rollout.cache="paged"`): memory
follows each row's own length, and a prompt's k samples share its prompt.

Shape letters: N rows (decode slots), K kv heads, G query heads per kv
head, H head dim, M pages per row (the longest row / page), NP pages in the
pool.

Layout, per layer and device: a pool of pages `[K, NP + 1, page, H]` for
keys and one for values (kv-head-major: the layout of JAX's Pallas TPU
paged-attention kernel). Page NP is the dump page: writes of free slots go
there and it is never handed out. A row's page table `table_NM` lists its
pages in order (entry m holds the row's slots [m * page, (m + 1) * page));
a free slot's entries are all the dump page.

Allocation (`allocate`, when the engine inserts prompts): each prompt's
`plen // page` full prompt pages once, shared by its k samples (reference
counted), and per sample the pages from there up to `plen + L` (the partial
prompt page is each sample's own copy: its response continues it). A
prompt is admitted only when all of that is free, so a decode step never
waits for a page and the engine never deadlocks; each sample's pages go
back to the pool when it ends (`hold(..., -1)`). `refs_P` [NP + 1] counts
the rows holding each page (0 = free; the dump page's count is never
touched). What paging buys: no prompt padding, one copy of a prompt's KV
for its k samples, and so more slots in the same memory (the pool is
sized by `rollout.pages`, not by slots x the longest row).

Attention (`attend`): "window" gathers every row's first pages up to the
longest fill (power-of-two buckets, like the contiguous window) into the
contiguous layout and runs the same softmax (`decode_attention.dense`), so
its outputs are the contiguous cache's bit for bit on XLA:CPU; "full"
gathers all M pages; "tpu_paged" is JAX's Pallas TPU kernel
(`jax.experimental.pallas.ops.tpu.paged_attention`): each row reads only
its own filled pages, straight from the pool. On CPU the kernel runs in
Pallas's TPU interpret mode (tests; it rounds matmul inputs to bfloat16
like a TPU's default precision); GPU is refused.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

from poly_epo.models.decode_attention import buckets, dense

IMPLEMENTATIONS = ("window", "full", "tpu_paged")


def pool_shape(cfg, pages: int, page: int) -> tuple:
  """One layer's key (or value) pool: `pages` pages plus the dump page."""
  return (cfg.num_kv_heads, pages + 1, page, cfg.head_dim)


def row_pages(plen, max_new_tokens: int, page: int):
  """(shared, private) pages of a prompt of `plen` tokens: its full prompt
  pages (shared by its samples) and each sample's own pages up to
  plen + L."""
  shared = plen // page
  return shared, -(-(plen + max_new_tokens) // page) - shared


def prompt_pages(plen, num_samples: int, max_new_tokens: int, page: int):
  """Pages a prompt and its samples hold at most (admission)."""
  shared, private = row_pages(plen, max_new_tokens, page)
  return shared + num_samples * private


def hold(refs_P, table_NM, delta: int, on_N=None):
  """Add `delta` to the count of every page in the rows' tables (rows
  where `on_N`); the dump page is skipped."""
  dump = refs_P.shape[0] - 1
  live = table_NM != dump
  if on_N is not None:
    live &= on_N[:, None]
  idx = jnp.where(live, table_NM, dump + 1)  # Out of range: dropped.
  return refs_P.at[idx.ravel()].add(delta, mode="drop")


def free_pages(refs_P):
  return jnp.sum(refs_P[:-1] == 0).astype(jnp.int32)


def allocate(refs_P, plen_B, ok_B, *, num_samples: int, max_new_tokens: int,
             page: int, pages_per_row: int):
  """Pages for B candidate prompts' k samples each (rows b * k + j).

  Admits the longest prefix of candidates whose pages are all free
  (candidates that are not `ok_B` need none).

  Returns:
    (refs_P with the new rows' holds, table [B * k, M] (the dump page where
    unused or not admitted), taken_B: the admitted prefix, not-ok
    candidates inside it included).
  """
  k, m = num_samples, pages_per_row
  dump = refs_P.shape[0] - 1
  b = plen_B.shape[0]
  shared, private = row_pages(plen_B, max_new_tokens, page)
  need = jnp.where(ok_B, shared + k * private, 0)
  taken = jnp.cumsum(need) <= free_pages(refs_P)  # A prefix: need >= 0.
  admitted = ok_B & taken
  need = jnp.where(admitted, need, 0)
  start = jnp.cumsum(need) - need
  total = b * k * m
  ids = jnp.nonzero(refs_P[:dump] == 0, size=total, fill_value=dump)[0]
  row = jnp.arange(b * k)
  pb, j = row // k, (row % k)[:, None]
  sh, pr, st = shared[pb][:, None], private[pb][:, None], start[pb][:, None]
  e = jnp.arange(m)[None]
  idx = jnp.where(e < sh, st + e, st + sh + j * pr + (e - sh))
  table = jnp.where(admitted[pb][:, None] & (e < sh + pr),
                    ids[jnp.clip(idx, 0, total - 1)], dump)
  return hold(refs_P, table, 1), table.astype(jnp.int32), taken


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


def _divisor(m: int, most: int = 8) -> int:
  return max(d for d in range(1, min(m, most) + 1) if m % d == 0)


def _tpu_kernel(q_NKGH, k_pool, v_pool, table_NM, length_N,
                interpret: bool):
  """The Pallas TPU kernel on each device's kv heads; `interpret`: Pallas's
  TPU interpreter (CPU)."""
  from jax.experimental.pallas import tpu as pltpu
  from jax.experimental.pallas.ops.tpu.paged_attention import (
      paged_attention)
  n, kh, g, h = q_NKGH.shape
  q = (q_NKGH.astype(jnp.float32) * h**-0.5).astype(q_NKGH.dtype)

  def kernel(*args):
    call = functools.partial(paged_attention, *args,
                             pages_per_compute_block=_divisor(
                                 table_NM.shape[1]))
    if not interpret:
      return call()
    with pltpu.force_tpu_interpret_mode():
      return call()

  args = (q.reshape(n, kh * g, h), k_pool, v_pool,
          length_N.astype(jnp.int32), table_NM)
  mesh = jax.sharding.get_abstract_mesh()
  auto = () if mesh.empty else tuple(
      a for a in mesh.axis_names if a not in mesh.manual_axes)
  if auto:  # A kernel is not partitioned automatically: each device runs it
    # on its kv heads (split over "tensor", as the sampler's weights are).
    heads = "tensor" if "tensor" in auto else None
    kernel = jax.shard_map(
        kernel, in_specs=(P(None, heads), P(heads), P(heads), P(), P()),
        out_specs=P(None, heads), axis_names=frozenset(auto),
        check_vma=False)
  return kernel(*args).reshape(n, kh, g, h).astype(q_NKGH.dtype)


def resolve(impl: str, platform: str) -> str:
  """The implementation a paged cache runs on `platform` (the devices the
  program is compiled for): "auto" is the kernel on TPU, else "window";
  the kernel runs interpreted on CPU ("tpu_paged_interpret")."""
  if impl == "auto":
    impl = "tpu_paged" if platform == "tpu" else "window"
  if impl not in IMPLEMENTATIONS:
    raise ValueError(f"rollout.attention={impl!r} with rollout.cache="
                     f"'paged' must be one of {IMPLEMENTATIONS} or 'auto'")
  if impl == "tpu_paged" and platform != "tpu":
    if platform != "cpu":
      raise ValueError(f"rollout.attention='tpu_paged' is the Pallas TPU "
                       f"kernel; on {platform} use 'window'")
    impl = "tpu_paged_interpret"
  return impl


def attend(q_NKGH, k_pool, v_pool, table_NM, length_N, *,
           impl: str = "window", window: int | None = None):
  """Softmax attention of each row's query over its slots [0, length_N).

  Args:
    q_NKGH: the new token's queries.
    k_pool, v_pool: [K, NP + 1, page, H] pools.
    table_NM: int32 page tables; length_N: int32 filled slots (>= 1).
    impl: "window" | "full" | "tpu_paged" (module docstring) |
      "tpu_paged_interpret" (the kernel interpreted) | "auto": as
      `resolve` on the default backend.
    window: a static number of slots to read (cost models; "window").
  """
  if impl == "auto":
    impl = resolve(impl, jax.default_backend())
  if impl not in IMPLEMENTATIONS + ("tpu_paged_interpret",):
    raise ValueError(f"rollout.attention={impl!r} with rollout.cache="
                     f"'paged' must be one of {IMPLEMENTATIONS} or 'auto'")
  page, m = k_pool.shape[2], table_NM.shape[1]
  if impl.startswith("tpu_paged"):
    return _tpu_kernel(q_NKGH, k_pool, v_pool, table_NM, length_N,
                       interpret=impl != "tpu_paged")

  def over(pages, q, kp, vp, table, length):
    return dense(q, gather(kp, table, pages), gather(vp, table, pages),
                 length, pages * page, True)

  args = (q_NKGH, k_pool, v_pool, table_NM, length_N)
  if impl == "full":
    return over(m, *args)
  if window is not None:
    return over(min(-(-int(window) // page), m), *args)
  sizes = buckets(m * page, page)
  need = (jnp.max(length_N) + page - 1) // page
  index = jnp.sum(jnp.asarray(sizes[:-1]) < need)
  return jax.lax.switch(index, [functools.partial(over, nb) for nb in sizes],
                        *args)
