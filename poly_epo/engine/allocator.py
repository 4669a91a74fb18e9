"""The paged cache's allocation policy (`rollout.cache="paged"`), in JAX,
run inside the engine's decode loop: which prompts are admitted, which
rows get a page this step, which wait. Its NumPy twin for the planner's
replay is `allocator_host.py`, tested against this step by step.

Shape letters: S slots (rows of the device), B candidate prompts, M pages
per row, NP pages in the pool (`engine/pool.py`; page NP is the dump page,
never handed out).

A prompt is admitted (`admit`) with its full prompt pages, held once for
its k samples (reference counted), and each sample's partial prompt page
(its response continues it); the rest of a sample's pages are handed out
one at a time as it grows (`grant`), so memory follows the tokens actually
decoded. The pool may be smaller than every row's longest: admissions and
grants follow the banker's algorithm (`safe`: each row's claim is its
pages up to plen + L), so a grant that could leave the rows unable to
finish waits, no row ever waits forever, and nothing is recomputed. The
oldest rows' claims are kept whole (`reserved`), so a short pool runs rows
to the end instead of all of them half way. `refs_P` [NP + 1] counts the
rows holding each page (0 = free; the dump page's count is never touched);
a sample's pages return as it ends (`hold(..., -1)`).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


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
