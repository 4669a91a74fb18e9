"""poly_epo.engine.allocator (and its NumPy twin allocator_host): the
banker's test, admissions and page grants checked against brute force
(every order of the rows tried), a prompt's full pages shared and the
partial page each sample's own, pages returned; and the JAX policy and the
planner's NumPy policy making the same admissions, grants and waits at
every step of random traces."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from poly_epo.engine import allocator as paged
from poly_epo.engine import allocator_host


def _safe_brute(claim, held, free) -> bool:
  """Some order lets every row get its whole claim, each returning what it
  held when it ends."""
  n = len(claim)
  for order in itertools.permutations(range(n)):
    f, ok = free, True
    for i in order:
      if claim[i] > f:
        ok = False
        break
      f += held[i]
    if ok:
      return True
  return n == 0


_SAFE = jax.jit(paged.safe)
_GRANT = jax.jit(paged.grant, static_argnums=(6, 8))


_reserve_ref = allocator_host.reserved  # Tested step by step below.


def test_the_bankers_test_by_brute_force():
  rs = np.random.RandomState(0)
  for _ in range(300):
    n = rs.randint(1, 6)
    claim, held = rs.randint(0, 5, n), rs.randint(0, 4, n)
    live = rs.rand(n) < 0.8
    free = rs.randint(0, 5)
    got = bool(_SAFE(jnp.asarray(claim), jnp.asarray(held),
                     jnp.asarray(live), free))
    assert got == _safe_brute(claim[live], held[live], free), (
        claim, held, live, free)


@pytest.mark.parametrize("most", [0, 1])
def test_admission_by_brute_force(most):
  k, L, page, m, pool = 2, 5, 4, 4, 14
  plen = np.array([9, 2, 4, 0, 7, 3])
  ok = plen > 0
  slots = np.arange(12).reshape(6, 2)  # Candidate i -> slots 2i, 2i + 1.
  # One live row already: claims 3 more pages, holds 1 of its own, and 2
  # pages of the pool (its prompt's and its own) are taken. Keeping its 3
  # (most=1) admits one prompt fewer.
  claim0, held0 = np.zeros(12, int), np.zeros(12, int)
  live0 = np.zeros(12, bool)
  claim0[11], held0[11], live0[11] = 3, 1, True
  refs0 = np.zeros(pool + 1, np.int32)
  refs0[[3, 7]] = 1
  refs, table, taken, claim, held = (np.asarray(x) for x in paged.admit(
      jnp.asarray(refs0), jnp.asarray(claim0), jnp.asarray(held0),
      jnp.asarray(live0), jnp.asarray(plen), jnp.asarray(ok),
      jnp.asarray(slots[:, :]), max_new_tokens=L, page=page,
      pages_per_row=m, reserve=most))
  # The reference: candidates in order, each admitted if the state with
  # its rows stays safe; the first refusal ends the admissions.
  c, h, live, free = claim0.copy(), held0.copy(), live0.copy(), pool - 2
  # Pages kept for the oldest `most` rows stay free through admissions.
  keep, _ = _reserve_ref(claim0, live0, np.arange(12), free, most)
  want = []
  for i, n in enumerate(plen):
    if not ok[i]:
      want.append(not want or want[-1])
      continue
    shared, partial = n // page, int(n % page > 0)
    own = -(-(n + L) // page) - shared
    c2, h2, l2 = c.copy(), h.copy(), live.copy()
    c2[slots[i]], h2[slots[i]], l2[slots[i]] = own - partial, partial, True
    f2 = free - shared - k * partial
    fits = f2 >= keep and _safe_brute(c2[l2], h2[l2], f2)
    want.append((not want or want[-1]) and fits)
    if want[-1]:
      c, h, live, free = c2, h2, l2, f2
  np.testing.assert_array_equal(taken, want)
  assert sum(want[i] and ok[i] for i in range(6)) == 4 - most
  np.testing.assert_array_equal(claim, c)
  np.testing.assert_array_equal(held, h)
  # Tables: a prompt's full pages shared by its samples, the partial page
  # each sample's own, nothing else yet; pages taken were free.
  counts = refs0.copy()
  for i, n in enumerate(plen):
    rows = table[i * k:(i + 1) * k]
    if not (want[i] and ok[i]):
      assert (rows == pool).all()
      continue
    shared, partial = n // page, int(n % page > 0)
    for j in range(k):
      assert (rows[j][:shared + partial] != pool).all()
      assert (rows[j][shared + partial:] == pool).all()
      np.testing.assert_array_equal(rows[j][:shared], rows[0][:shared])
      counts[rows[j][:shared + partial]] += 1
    if partial:
      assert rows[0][shared] != rows[1][shared]
  assert counts[3] == 1 and counts[7] == 1  # Untouched.
  np.testing.assert_array_equal(refs, counts)


def test_grants_keep_the_state_safe_and_some_row_moves():
  rs = np.random.RandomState(1)
  page, m, pool = 2, 6, 9
  seen = {"granted": 0, "waited": 0}
  for _ in range(40):
    n = 5
    live = rs.rand(n) < 0.9
    held = rs.randint(0, 3, n) * live
    claim = rs.randint(1, 4, n) * live
    if live.sum() == 0 or sum(held) > pool:
      continue
    free = pool - held.sum()
    if not _safe_brute(claim[live], held[live], free):
      continue  # Only safe states occur.
    table = np.full((n, m), pool, np.int32)
    refs = np.zeros(pool + 1, np.int32)
    ids = iter(range(pool))
    for r in range(n):
      for e in range(held[r]):
        table[r, e] = next(ids)
        refs[table[r, e]] = 1
    # Each live row writes just past its pages (needs one) or inside them.
    inside = rs.rand(n) < 0.3
    slot = np.where(inside & (held > 0), 0, held * page)
    age = rs.permutation(n)  # Lower = older: granted first.
    most = rs.randint(0, 4)  # Rows whose pages are kept for them.
    out = _GRANT(jnp.asarray(refs), jnp.asarray(table),
                 jnp.asarray(claim), jnp.asarray(held),
                 jnp.asarray(live), jnp.asarray(slot), page,
                 jnp.asarray(age, jnp.int32), most)
    refs2, table2, claim2, held2, waiting = (np.asarray(x) for x in out)
    need = live & (slot // page >= held)
    assert not (waiting & ~need).any()
    assert (live & ~waiting).any()  # Some row always moves.
    # Replay the grants, oldest first, against the brute-force test: the
    # kept rows from the free pages, the others from the pages beyond.
    c, h, f = claim.copy(), held.copy(), free
    keep, kept = _reserve_ref(claim, live, age, free, most)
    spare = free - keep
    for r in sorted(np.flatnonzero(need), key=lambda r: age[r]):
      c2, h2 = c.copy(), h.copy()
      c2[r] -= 1
      h2[r] += 1
      ok = (f >= 1 and (kept[r] or spare >= 1) and
            _safe_brute(c2[live], h2[live], f - 1))
      spare -= ok and not kept[r]
      assert ok or not kept[r]  # A kept row never waits.
      assert ok == (not waiting[r]), (claim, held, live, r)
      seen["granted" if ok else "waited"] += 1
      if ok:
        c, h, f = c2, h2, f - 1
        new = table2[r, slot[r] // page]
        assert new != pool and refs[new] == 0 and refs2[new] == 1
    np.testing.assert_array_equal(claim2, c)
    np.testing.assert_array_equal(held2, h)
    assert (refs2[:-1] > 0).sum() == pool - f
  assert seen["granted"] > 5 and seen["waited"] > 5, seen  # Both happen.


def test_pages_return_to_the_pool():
  refs = jnp.zeros(9, jnp.int32)
  refs, table, taken, _, _ = paged.admit(
      refs, jnp.zeros(4, jnp.int32), jnp.zeros(4, jnp.int32),
      jnp.zeros(4, bool), jnp.asarray([9, 6]), jnp.asarray([True, True]),
      jnp.arange(4).reshape(2, 2), max_new_tokens=3, page=4,
      pages_per_row=3)
  # 9 tokens: 2 shared pages + a partial one each; 6: 1 + a partial each.
  assert np.asarray(taken).all() and int(paged.free_pages(refs)) == 8 - 7
  freed = paged.hold(refs, table, -1)
  assert int(jnp.sum(freed)) == 0 and int(paged.free_pages(freed)) == 8



_ADMISSION = jax.jit(paged.admission, static_argnames=(
    "max_new_tokens", "page", "reserve"))
_ADMIT = jax.jit(paged.admit, static_argnames=(
    "max_new_tokens", "page", "pages_per_row", "reserve"))
_HOLD = jax.jit(paged.hold, static_argnums=(2,))


def _trace(seed, slots=8, k=2, page=3, pages=14, L=7, prompts=9):
  """The continuous engine's page decisions on a random trace, by the JAX
  policy and by the NumPy one side by side: at every step the same
  admission, the same grants and waits, the same claims and free pages."""
  rs = np.random.RandomState(seed)
  plen = rs.randint(1, 6, prompts)
  length = rs.randint(1, L + 1, (prompts, k))  # Each row's tokens.
  m = -(-(plen.max() + L) // page)
  most = paged.reserve_rows(pages, m)
  policy = dict(max_new_tokens=L, page=page, reserve=most)
  refs = jnp.zeros(pages + 1, jnp.int32)
  table = jnp.full((slots, m), pages, jnp.int32)
  claim = np.zeros(slots, np.int32)
  held = np.zeros(slots, np.int32)
  row = np.full(slots, -1)  # The engine's row id (its age), -1 free.
  plen_s, age = np.zeros(slots, int), np.zeros(slots, int)
  free, shared_of, left = pages, {}, {}
  queue, steps, waits = 0, 0, 0
  while queue < prompts or (row >= 0).any():
    live = row >= 0
    free_slots = np.flatnonzero(~live)[:k]
    if queue < prompts and len(free_slots) == k:
      cand = jnp.asarray(free_slots[None])
      args = (jnp.asarray(claim), jnp.asarray(held), jnp.asarray(live),
              jnp.asarray(plen[queue:queue + 1]), jnp.asarray([True]), cand)
      taken, c, h = _ADMISSION(refs, *args, order_S=jnp.asarray(row),
                                    **policy)
      t2, c2, h2, f2 = allocator_host.admission(
          free, claim, held, live, plen[queue:queue + 1], [True],
          free_slots[None], order_S=row, **policy)
      assert bool(taken[0]) == bool(t2[0]), (seed, steps)
      np.testing.assert_array_equal(np.asarray(c), c2)
      np.testing.assert_array_equal(np.asarray(h), h2)
      if t2[0]:
        refs, tab, _, c, h = _ADMIT(
            refs, *args, order_S=jnp.asarray(row),
            pages_per_row=m, **policy)
        table = table.at[free_slots].set(tab)
        claim, held, free = np.asarray(c), np.asarray(h), f2
        row[free_slots] = queue * k + np.arange(k)
        plen_s[free_slots], age[free_slots] = plen[queue], 1
        shared_of[queue] = plen[queue] // page
        left[queue] = k
        queue += 1
    live = row >= 0
    slot = np.where(live, plen_s + age - 1, 0)
    refs, table, c, h, waiting = _GRANT(
        refs, table, jnp.asarray(claim), jnp.asarray(held),
        jnp.asarray(live), jnp.asarray(slot), page,
        jnp.asarray(row, jnp.int32), most)
    need = live & (slot // page >= plen_s // page + held)
    c2, h2, w2, free = allocator_host.grant(free, need, claim, held, live,
                                            row, most)
    np.testing.assert_array_equal(np.asarray(waiting), w2)
    np.testing.assert_array_equal(np.asarray(c), c2)
    np.testing.assert_array_equal(np.asarray(h), h2)
    claim, held = c2, h2
    assert int(paged.free_pages(refs)) == free, (seed, steps)
    run = live & ~w2
    waits += int(w2.sum())
    age[run] += 1
    done = run & (age > length.ravel()[np.maximum(row, 0)])
    if done.any():  # Their pages go back (the prompt's with its last row).
      refs = _HOLD(refs, table, -1, jnp.asarray(done))
      table = jnp.where(jnp.asarray(done)[:, None], pages, table)
      for s in np.flatnonzero(done):
        b = row[s] // k
        free += held[s]
        left[b] -= 1
        if left[b] == 0:
          free += shared_of[b]
      claim[done], held[done], row[done] = 0, 0, -1
      assert int(paged.free_pages(refs)) == free
    steps += 1
    assert steps < 500, "no progress"
  assert free == pages  # Every page back.
  return steps, waits


def test_the_jax_and_numpy_policies_decide_alike_step_by_step():
  total_waits = 0
  for seed in range(6):
    _, waits = _trace(seed)
    total_waits += waits
  assert total_waits > 0  # The pool was short: rows did wait.
