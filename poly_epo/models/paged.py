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

Allocation. A prompt is admitted (`admit`) with its full prompt pages,
held once for its k samples (reference counted), and each sample's
partial prompt page (its response continues it); the rest of a sample's
pages are handed out one at a time as it grows (`grant`), so memory
follows the tokens actually decoded. The pool may be smaller than every
row's longest: admissions and grants follow the banker's algorithm
(`safe`: each row's claim is its pages up to plen + L), so a grant that
could leave the rows unable to finish waits, no row ever waits forever,
and nothing is recomputed. `refs_P` [NP + 1] counts the rows holding each
page (0 = free; the dump page's count is never touched); a sample's pages
return as it ends. What paging buys: no prompt padding, one copy of a
prompt's KV for its k samples, and pages only for the tokens decoded, so
more slots in the same memory (the pool is `rollout.pages`).

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
  """(shared, own) pages of a prompt of `plen` tokens: its full prompt
  pages (shared by its samples) and the most pages of each sample's own
  (the partial prompt page, then its response's) up to plen + L."""
  shared = plen // page
  return shared, -(-(plen + max_new_tokens) // page) - shared


def prompt_pages(plen, num_samples: int, max_new_tokens: int, page: int):
  """Pages a prompt and its samples hold at most."""
  shared, own = row_pages(plen, max_new_tokens, page)
  return shared + num_samples * own


def worst_prompt_pages(width: int, num_samples: int, max_new_tokens: int,
                       page: int) -> int:
  """The most pages a prompt of up to `width` tokens can hold."""
  return max(prompt_pages(n, num_samples, max_new_tokens, page)
             for n in range(width + 1))


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


def safe(claim_S, held_S, live_S, free):
  """The banker's test: can every live row still get all the pages it may
  need (`claim_S`), in some order, if each returns its own pages
  (`held_S`) when it ends? Rows in order of claim, each needing at most the
  free pages plus those of the rows before it. Shared prompt pages are not
  counted as returned (conservative: still safe)."""
  r = jnp.where(live_S, claim_S, 0)
  h = jnp.where(live_S, held_S, 0)
  order = jnp.argsort(r)
  r, h = r[order], h[order]
  return jnp.all(r <= free + jnp.cumsum(h) - h)


def reserve_rows(pages: int, pages_per_row: int) -> int:
  """Rows whose pages `reserved` keeps: 3/4 of the rows the pool holds at
  their longest. The planner's replay of the recipe (8 v5p, 128 rows per
  chip, a pool of 64 rows' pages) took 7,037 / 4,098 / 4,101 decode steps
  for responses all at the cap / uniform / capped this way, against
  18,924 / 4,098 / 4,101 with no reserve and 6,376 uniform when every
  covered row is kept."""
  return max(1, 3 * pages // (4 * pages_per_row))


def reserved(claim_S, live_S, order_S, free, most: int):
  """The oldest rows (at most `most`) whose claims the free pages cover all
  together (a prefix in age order `order_S`, lower = older): (their
  claims' sum, in_S). Their pages are kept for them: the others decode on
  the pages beyond (`grant`), and a new prompt is admitted only from those
  (`admit`). So the oldest rows never wait behind younger ones, and a
  short pool runs rows to the end instead of all of them half way (with
  grants by the banker's test alone, rows at the cap crawl one at a time
  once the pool is spent)."""
  n = claim_S.shape[0]
  big = jnp.iinfo(jnp.int32).max
  order = jnp.argsort(jnp.where(live_S, order_S, big), stable=True)
  c = jnp.where(live_S, claim_S, 0)[order]
  within = (jnp.cumsum(c) <= free) & (jnp.arange(n) < most)
  total = jnp.sum(jnp.where(within, c, 0))
  in_S = jnp.zeros((n,), bool).at[order].set(within) & live_S
  return total, in_S


def admit(refs_P, claim_S, held_S, live_S, plen_B, ok_B, slots_BK, *,
          max_new_tokens: int, page: int, pages_per_row: int, order_S=None,
          reserve: int = 0):
  """Admit candidate prompts in queue order while the state stays safe and
  the pages they take at once leave the oldest `reserve` rows' pages
  (`reserved`; `order_S` the rows' age, default slot order) whole.

  Each admitted prompt takes its full prompt pages (shared by its k
  samples) and, per sample, the partial prompt page if any; its samples'
  remaining pages are claimed, handed out as they grow (`grant`).

  Args:
    claim_S, held_S, live_S: the device's slots (pages each may still
      need, own pages held, decoding a row).
    plen_B, ok_B: candidate prompts (not ok: needs nothing, admitted).
    slots_BK: the free slots each candidate's k samples go to.

  Returns:
    (refs_P, table [B * k, M] of the new rows (the dump page where unused
    or not admitted), taken_B (the admitted prefix, not-ok candidates in it
    included), claim_S, held_S).
  """
  taken, claim_S, held_S = admission(
      refs_P, claim_S, held_S, live_S, plen_B, ok_B, slots_BK,
      max_new_tokens=max_new_tokens, page=page, order_S=order_S,
      reserve=reserve)
  shared, _ = row_pages(plen_B, max_new_tokens, page)
  refs_P, table = _allocate(refs_P, shared, _partial(plen_B, page),
                            ok_B & taken, slots_BK.shape[1], pages_per_row)
  return refs_P, table, taken, claim_S, held_S


def _partial(plen, page: int):
  """1 where a prompt ends inside a page (each sample's copy), else 0."""
  return (plen % page > 0).astype(jnp.int32)


def admission(refs_P, claim_S, held_S, live_S, plen_B, ok_B, slots_BK, *,
              max_new_tokens: int, page: int, order_S=None,
              reserve: int = 0):
  """`admit`'s decision without taking any page: (taken_B, claim_S,
  held_S). The engine's refill test asks only this."""
  b, k = slots_BK.shape
  shared, own = row_pages(plen_B, max_new_tokens, page)
  first = _partial(plen_B, page)
  order_S = jnp.arange(claim_S.shape[0]) if order_S is None else order_S
  keep, _ = reserved(claim_S, live_S, order_S, free_pages(refs_P), reserve)

  def one(i, carry):
    claim, held, live, free, going, taken = carry
    rows = slots_BK[i]
    c2 = claim.at[rows].set(own[i] - first[i])
    h2 = held.at[rows].set(first[i])
    l2 = live.at[rows].set(True)
    f2 = free - shared[i] - k * first[i]
    fits = (f2 >= keep) & safe(c2, h2, l2, f2)
    take = going & (~ok_B[i] | fits)
    add = take & ok_B[i]
    pick = lambda new, old: jnp.where(add, new, old)
    return (pick(c2, claim), pick(h2, held), pick(l2, live),
            pick(f2, free), take, taken.at[i].set(take))

  claim_S, held_S, _, _, _, taken = jax.lax.fori_loop(
      0, b, one, (claim_S, held_S, live_S, free_pages(refs_P),
                  jnp.asarray(True), jnp.zeros((b,), bool)))
  return taken, claim_S, held_S


def _allocate(refs_P, shared_B, own_B, admitted_B, k: int, m: int):
  """Free pages to admitted prompts: `shared_B` once per prompt (table
  entries [0, shared)), `own_B` per sample (entries after them)."""
  dump = refs_P.shape[0] - 1
  b = shared_B.shape[0]
  need = jnp.where(admitted_B, shared_B + k * own_B, 0)
  start = jnp.cumsum(need) - need
  total = b * k * m
  ids = jnp.nonzero(refs_P[:dump] == 0, size=total, fill_value=dump)[0]
  row = jnp.arange(b * k)
  pb, j = row // k, (row % k)[:, None]
  sh, pr, st = shared_B[pb][:, None], own_B[pb][:, None], start[pb][:, None]
  e = jnp.arange(m)[None]
  idx = jnp.where(e < sh, st + e, st + sh + j * pr + (e - sh))
  table = jnp.where(admitted_B[pb][:, None] & (e < sh + pr),
                    ids[jnp.clip(idx, 0, total - 1)], dump)
  return hold(refs_P, table, 1), table.astype(jnp.int32)


def grant(refs_P, table_SM, claim_S, held_S, live_S, slot_S, page: int,
          order_S=None, reserve: int = 0):
  """A page to every live row about to write into a page it does not hold
  (slot `slot_S`), oldest first (`order_S`: lower first; the engine's row
  ids, admitted in queue order; default slot order): a row of the oldest
  `reserve` rows' reserve (`reserved`) gets one whenever the state stays
  safe, another only from the pages beyond the reserve; the others wait (they
  decode nothing this step). Some row always moves: the oldest live row
  is in the reserve whenever the free pages cover its claim, and
  otherwise the first row of a safe order is granted from the spare
  pages.

  Returns (refs_P, table_SM, claim_S, held_S, waiting_S)."""
  dump = refs_P.shape[0] - 1
  n = table_SM.shape[0]
  rows = jnp.arange(n)
  entry = slot_S // page
  need = live_S & (table_SM[rows, entry] == dump)
  rank = rows if order_S is None else order_S
  order = jnp.argsort(jnp.where(need, rank, jnp.iinfo(jnp.int32).max),
                      stable=True)
  keep, kept_S = reserved(claim_S, live_S, rank, free_pages(refs_P),
                         reserve)

  def one(i, carry):
    refs, table, claim, held, waiting, spare = carry
    s = order[i]
    free = free_pages(refs)
    c2, h2 = claim.at[s].add(-1), held.at[s].add(1)
    ok = (free >= 1) & (kept_S[s] | (spare >= 1)) & safe(c2, h2, live_S,
                                                         free - 1)
    new = jnp.argmax(refs[:dump] == 0)
    return (jnp.where(ok, refs.at[new].set(1), refs),
            jnp.where(ok, table.at[s, entry[s]].set(new), table),
            jnp.where(ok, c2, claim), jnp.where(ok, h2, held),
            waiting.at[s].set(~ok), spare - (ok & ~kept_S[s]))

  out = jax.lax.fori_loop(
      0, jnp.sum(need), one,
      (refs_P, table_SM, claim_S, held_S, jnp.zeros((n,), bool),
       free_pages(refs_P) - keep))
  return out[:5]


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
  if impl == "window" and platform == "tpu":
    # Found compiling for v5p (libtpu of JAX 0.10.2): the gathered window
    # under lax.switch aborts the TPU compiler (a memory-space assignment
    # check); the kernel is what TPU should run anyway.
    raise ValueError("rollout.attention='window' over rollout.cache="
                     "'paged' does not compile for TPU: use 'tpu_paged' "
                     "(or 'auto'), or 'full'")
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
