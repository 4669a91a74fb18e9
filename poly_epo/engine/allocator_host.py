"""The page policy of `allocator.py` in NumPy, for the planner's replay of
a schedule on the host (`plan_rollout._replay`): the same admissions,
grants and waits at every step (tests/test_engine_allocator.py drives both
on random traces and compares them step by step). Pages are counted, not
named: `free` is the pool's free page count.

Shape letters: S slots, B candidate prompts, k samples per prompt.
"""

from __future__ import annotations

import numpy as np

from poly_epo.engine.allocator import row_pages


def safe(claim_S, held_S, live_S, free: int) -> bool:
  """`allocator.safe`: the banker's test over the live rows."""
  c = np.where(live_S, claim_S, 0)
  h = np.where(live_S, held_S, 0)
  order = np.argsort(c, kind="stable")
  c, h = c[order], h[order]
  return bool(np.all(c <= free + np.cumsum(h) - h))


def reserved(claim_S, live_S, order_S, free: int, most: int):
  """`allocator.reserved`: (claims' sum, in_S) of the oldest live rows (at
  most `most`, a prefix in age order) whose claims `free` covers."""
  n = len(claim_S)
  big = np.iinfo(np.int32).max
  order = np.argsort(np.where(live_S, order_S, big), kind="stable")
  c = np.where(live_S, claim_S, 0)[order]
  within = (np.cumsum(c) <= free) & (np.arange(n) < most)
  in_S = np.zeros(n, bool)
  in_S[order] = within
  return int(np.sum(np.where(within, c, 0))), in_S & live_S


def admission(free: int, claim_S, held_S, live_S, plen_B, ok_B, slots_BK, *,
              max_new_tokens: int, page: int, order_S, reserve: int):
  """`allocator.admission`: (taken_B, claim_S, held_S, free) after admitting
  a prefix of the candidates (`free` less the pages they took)."""
  claim, held, live = (np.array(x) for x in (claim_S, held_S, live_S))
  k = slots_BK.shape[1]
  plen_B = np.asarray(plen_B)
  shared, own = row_pages(plen_B, max_new_tokens, page)
  first = (plen_B % page > 0).astype(int)
  keep, _ = reserved(claim, live, order_S, free, reserve)
  taken = np.zeros(len(plen_B), bool)
  for i in range(len(plen_B)):
    if not ok_B[i]:
      taken[i] = True
      continue
    rows = slots_BK[i]
    c2, h2, l2 = claim.copy(), held.copy(), live.copy()
    c2[rows], h2[rows], l2[rows] = own[i] - first[i], first[i], True
    f2 = free - shared[i] - k * first[i]
    if not (f2 >= keep and safe(c2, h2, l2, f2)):
      break
    claim, held, live, free = c2, h2, l2, f2
    taken[i] = True
  return taken, claim, held, free


def grant(free: int, need_S, claim_S, held_S, live_S, order_S,
          reserve: int):
  """`allocator.grant`: a page to each row of `need_S` (about to write into
  a page it does not hold), oldest first, while the state stays safe and
  the reserve allows. Returns (claim_S, held_S, waiting_S, free)."""
  claim, held = np.array(claim_S), np.array(held_S)
  waiting = np.zeros(len(claim), bool)
  keep, kept = reserved(claim, live_S, order_S, free, reserve)
  spare = free - keep
  big = np.iinfo(np.int32).max
  order = np.argsort(np.where(need_S, order_S, big), kind="stable")
  for s in order[:int(np.sum(need_S))]:
    c2, h2 = claim.copy(), held.copy()
    c2[s] -= 1
    h2[s] += 1
    if free >= 1 and (kept[s] or spare >= 1) and safe(c2, h2, live_S,
                                                      free - 1):
      claim, held, free = c2, h2, free - 1
      spare -= not kept[s]
    else:
      waiting[s] = True
  return claim, held, waiting, free
