"""The engine's cache layouts behind one interface, so the decode loop
(`loop.py`) never branches on the layout: `layout_of(spec)` is `Contiguous`
(a cache row per slot, `k [S, K, C, H]` or `[S, K, H, C]`, `v [S, K, C, H]`
per layer), `Paged` (a pool of pages per layer, `pool.py`, pages handed
out by `allocator.py`) or `Prefix` (each prompt once, a response row per
slot: the static engine's). Each gives:

  init(cfg, spec)              -> (k, v, pages: PageState | None)
  admit(st, spec, plen_R, ok_R, slots_RK)
                               -> (st, taken_R, table_N)  at a refill
  write_prompt(st, spec, cache, dest_N, table_N, ended_N, ok_N, rep)
                               -> st                      the prefill's KV
  grant(st, spec, busy_S, slot_S) -> (st, busy_S)         before a step
  tables(st, width)            -> page tables for the model, or None
  release(st, spec, done_S)    -> st                      rows that ended
  compact(st, take)            -> st                      narrowing moves
  room(st, c, spec)            -> whether the next prompt can be admitted
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from poly_epo.engine import allocator, pool
from poly_epo.models.transformer import init_cache


class PageState(NamedTuple):
  """The paged layout's part of the loop's state (S slots, NP pages)."""
  table_SM: jax.Array  # int32 [S, M] page tables (dump page NP: none)
  refs_P: jax.Array  # int32 [NP + 1] rows holding each page
  claim_S: jax.Array  # int32 pages the row may still need
  held_S: jax.Array  # int32 own pages the row holds
  peak_1: jax.Array  # int32 most pages held at once
  waits_1: jax.Array  # int32 row-steps spent waiting for a page


def free_slots(row_S, n: int):
  """The first `n` free slots (lowest first; busy ones after them when
  fewer are free)."""
  return jnp.argsort(row_S >= 0, stable=True)[:n]


def _zeros(n):
  return jnp.zeros((n,), jnp.int32)


class Contiguous:
  """A cache row per slot, each row packed from slot 0."""

  @staticmethod
  def init(cfg, spec):
    cache = init_cache(cfg, spec.slots, spec.cache_len)
    k = tuple(jnp.swapaxes(x, 2, 3) for x in cache.k) if spec.keys_ch \
        else cache.k
    return k, cache.v, None

  @staticmethod
  def admit(st, spec, plen_R, ok_R, slots_RK):
    del spec, plen_R, slots_RK
    return st, ok_R, None

  @staticmethod
  def write_prompt(st, spec, cache, dest_N, table_N, ended_N, ok_N, rep):
    del table_N, ended_N, ok_N
    p = cache.v[0].shape[2]
    at = lambda a, x: a.at[dest_N, :, :p, :].set(rep(x), mode="drop")
    return st._replace(
        k=tuple(at(a, jnp.swapaxes(b, 2, 3)) if spec.keys_ch else
                a.at[dest_N, :, :, :p].set(rep(b), mode="drop")
                for a, b in zip(st.k, cache.k)),
        v=tuple(at(a, b) for a, b in zip(st.v, cache.v)))

  @staticmethod
  def grant(st, spec, busy_S, slot_S):
    del spec, slot_S
    return st, busy_S

  @staticmethod
  def tables(st, width):
    del st, width
    return None

  @staticmethod
  def release(st, spec, done_S):
    del spec, done_S
    return st

  @staticmethod
  def compact(st, take):
    return st._replace(k=tuple(map(take, st.k)), v=tuple(map(take, st.v)))

  @staticmethod
  def room(st, c, spec):
    del st, c, spec
    return jnp.asarray(True)


def _note_peak(pg: PageState, spec) -> PageState:
  return pg._replace(peak_1=jnp.maximum(
      pg.peak_1, spec.pages - allocator.free_pages(pg.refs_P)))


class Paged:
  """A pool of pages per layer; prompts' full pages shared by their
  samples; pages granted as rows grow (`allocator.py`)."""

  @staticmethod
  def init(cfg, spec):
    shape = pool.pool_shape(cfg, spec.pages, spec.page)
    pools = lambda: tuple(jnp.zeros(shape, cfg.dtype)
                          for _ in range(cfg.num_layers))
    pg = PageState(
        table_SM=jnp.full((spec.slots, spec.cache_len // spec.page),
                          spec.pages, jnp.int32),
        refs_P=_zeros(spec.pages + 1), claim_S=_zeros(spec.slots),
        held_S=_zeros(spec.slots), peak_1=_zeros(1), waits_1=_zeros(1))
    return pools(), pools(), pg

  @staticmethod
  def admit(st, spec, plen_R, ok_R, slots_RK):
    """A prefix of the candidate prompts, while safe (`allocator.admit`)."""
    pg = st.pages
    refs, table_N, taken_R, claim, held = allocator.admit(
        pg.refs_P, pg.claim_S, pg.held_S, st.row_S >= 0, plen_R,
        ok_R & (plen_R > 0), slots_RK, max_new_tokens=spec.max_new_tokens,
        page=spec.page, pages_per_row=spec.cache_len // spec.page,
        order_S=st.row_S, reserve=spec.reserve)
    pg = _note_peak(pg._replace(refs_P=refs, claim_S=claim, held_S=held),
                    spec)
    return st._replace(pages=pg), taken_R, table_N

  @staticmethod
  def write_prompt(st, spec, cache, dest_N, table_N, ended_N, ok_N, rep):
    pg = st.pages
    return st._replace(
        k=tuple(pool.write_prompt(a, rep(jnp.swapaxes(b, 2, 3)), table_N)
                for a, b in zip(st.k, cache.k)),
        v=tuple(pool.write_prompt(a, rep(b), table_N)
                for a, b in zip(st.v, cache.v)),
        pages=pg._replace(
            refs_P=allocator.hold(pg.refs_P, table_N, -1,
                                  on_N=ended_N & ok_N),
            table_SM=pg.table_SM.at[dest_N].set(
                jnp.where((ended_N | ~ok_N)[:, None], spec.pages, table_N),
                mode="drop")))

  @staticmethod
  def grant(st, spec, busy_S, slot_S):
    """Pages for rows entering a new one; a row denied one waits (decodes
    nothing this step)."""
    pg = st.pages
    refs, table, claim, held, waiting = allocator.grant(
        pg.refs_P, pg.table_SM, pg.claim_S, pg.held_S, busy_S, slot_S,
        spec.page, st.row_S, spec.reserve)
    pg = _note_peak(pg._replace(refs_P=refs, table_SM=table, claim_S=claim,
                                held_S=held,
                                waits_1=pg.waits_1 + jnp.sum(waiting)), spec)
    return st._replace(pages=pg), busy_S & ~waiting

  @staticmethod
  def tables(st, width):
    return st.pages.table_SM[:width]

  @staticmethod
  def release(st, spec, done_S):
    """The ended rows' pages go back to the pool."""
    pg = st.pages
    return st._replace(pages=pg._replace(
        refs_P=allocator.hold(pg.refs_P, pg.table_SM, -1, on_N=done_S),
        table_SM=jnp.where(done_S[:, None], spec.pages, pg.table_SM)))

  @staticmethod
  def compact(st, take):
    """The pool stays; the slots' page tables and claims move."""
    pg = st.pages
    return st._replace(pages=pg._replace(
        table_SM=take(pg.table_SM), claim_S=take(pg.claim_S),
        held_S=take(pg.held_S)))

  @staticmethod
  def room(st, c, spec):
    """Whether the queue's next prompt would be admitted now: the
    admission test alone, no page taken."""
    pg = st.pages
    nxt = jnp.minimum(st.next_1[0], c.plen_B.shape[0] - 1)
    free = free_slots(st.row_S, spec.num_samples)
    return allocator.admission(
        pg.refs_P, pg.claim_S, pg.held_S, st.row_S >= 0,
        c.plen_B[nxt][None], c.plen_B[nxt][None] > 0, free[None],
        max_new_tokens=spec.max_new_tokens, page=spec.page,
        order_S=st.row_S, reserve=spec.reserve)[0][0]


class Prefix(Contiguous):
  """Each prompt's keys and values once, and a response row per slot
  (`kernels/prefix.py`): the static engine, whose one insert puts the
  device's B prompts' k samples in slots b * k + j. Per layer the keys are
  (prompt [B, K, H, P], responses [S, K, H, L]), the values (prompt
  [B, K, P, H], responses [S, K, L, H])."""

  @staticmethod
  def init(cfg, spec):
    if spec.refill or spec.widths or spec.keys_ch:
      raise ValueError("rollout.cache='prefix' serves the static engine "
                       "(no refills, no narrowing) with keys_ch off")
    prompt = init_cache(cfg, spec.slots // spec.num_samples,
                        spec.prompt_width)
    resp = init_cache(cfg, spec.slots, spec.max_new_tokens)
    return (tuple(zip(prompt.k, resp.k)), tuple(zip(prompt.v, resp.v)),
            None)

  @staticmethod
  def write_prompt(st, spec, cache, dest_N, table_N, ended_N, ok_N, rep):
    """The prefill of all the device's prompts, held once."""
    del dest_N, table_N, ended_N, ok_N, rep
    fin = lambda x, into: jnp.nan_to_num(
        x, posinf=0.0, neginf=0.0).astype(into.dtype)
    if cache.v[0].shape[:3] != st.v[0][0].shape[:3]:
      raise ValueError(f"prefix cache: a prefill of {cache.v[0].shape[:3]} "
                       f"for a prompt cache of {st.v[0][0].shape[:3]} "
                       "(the static engine inserts every prompt at once)")
    return st._replace(
        k=tuple((fin(b, a[0]), a[1]) for a, b in zip(st.k, cache.k)),
        v=tuple((fin(b, a[0]), a[1]) for a, b in zip(st.v, cache.v)))

  @staticmethod
  def tables(st, width):
    """The rows' prompt lengths (the kernel's and the writes' index)."""
    return st.plen_S[:width]

  @staticmethod
  def compact(st, take):
    raise ValueError("the prefix cache does not narrow (static engine)")


def layout_of(spec):
  if spec.page:
    return Paged
  return Prefix if spec.settings.cache == "prefix" else Contiguous
