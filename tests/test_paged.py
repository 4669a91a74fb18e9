"""poly_epo.models.paged: the banker's test, admissions and page grants
checked against brute force (every order of the rows tried), a prompt's
full pages shared and the partial page each sample's own, pages returned;
prompt writes read back; paged attention = a NumPy softmax over each row's
filled slots ("window", "full", and the Pallas TPU kernel in interpret
mode)."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from poly_epo.models import paged


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


def _reserve_ref(claim, live, age, free, most):
  """The oldest live rows, at most `most`, whose claims `free` covers."""
  total, kept = 0, np.zeros(len(claim), bool)
  for r in sorted(np.flatnonzero(live), key=lambda r: age[r])[:most]:
    if total + claim[r] > free:
      break
    total += claim[r]
    kept[r] = True
  return total, kept


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


def _pool(rows, kh=2, h=8, page=4, m=4, seed=0, bf16=False):
  """Random contiguous rows [N, K, C, H] and the same in shuffled pages."""
  rs = np.random.RandomState(seed)
  c = page * m
  x = rs.normal(size=(rows, kh, c, h)).astype(np.float32)
  if bf16:  # Exact in bfloat16 (the TPU kernel's matmul inputs).
    x = np.asarray(jnp.asarray(x, jnp.bfloat16).astype(jnp.float32))
  npages = rows * m + 3
  perm = rs.permutation(npages)[:rows * m].reshape(rows, m)
  pool = np.zeros((kh, npages + 1, page, h), np.float32)
  for r in range(rows):
    for e in range(m):
      pool[:, perm[r, e]] = x[r, :, e * page:(e + 1) * page]
  return x, jnp.asarray(pool), jnp.asarray(perm, jnp.int32)


def test_prompt_writes_and_token_writes_read_back():
  x, pool, table = _pool(3)
  blank = jnp.zeros_like(pool)
  got = paged.write_prompt(blank, jnp.asarray(x[:, :, :7]), table)
  np.testing.assert_array_equal(
      np.asarray(paged.gather(got, table, 2))[:, :, :7], x[:, :, :7])
  new = np.random.RandomState(1).normal(size=(3, 2, 8)).astype(np.float32)
  slot = jnp.asarray([0, 5, 15])
  got = paged.write_token(pool, jnp.asarray(new), table, slot)
  want = x.copy()
  want[np.arange(3), :, [0, 5, 15]] = new
  np.testing.assert_array_equal(np.asarray(paged.gather(got, table, 4)),
                                want)


def _reference(q, x_k, x_v, lengths):
  out = np.zeros(q.shape, np.float64)
  h = q.shape[-1]
  for n, ln in enumerate(lengths):
    s = np.einsum("kgh,kch->kgc", q[n], x_k[n, :, :ln]) / np.sqrt(h)
    p = np.exp(s - s.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    out[n] = np.einsum("kgc,kch->kgh", p, x_v[n, :, :ln])
  return out


@pytest.mark.parametrize("impl", ["window", "full", "tpu_paged_interpret"])
def test_attention_equals_softmax_over_the_filled_slots(impl):
  rows, g, h = 4, 2, 16  # H^-1/2 = 1/4 scales q exactly.
  bf16 = impl not in ("window", "full")  # The kernel: bfloat16-exact inputs.
  xk, kpool, table = _pool(rows, h=h, seed=2, bf16=bf16)
  xv = xk[:, :, ::-1].copy()  # Other values in the same pages.
  vpool = paged.write_prompt(jnp.zeros_like(kpool), jnp.asarray(xv), table)
  q = np.random.RandomState(3).normal(size=(rows, 2, g, h)).astype(
      np.float32)
  if bf16:
    q = np.asarray(jnp.asarray(q, jnp.bfloat16).astype(jnp.float32))
  lengths = np.array([1, 5, 9, 16])
  got = paged.attend(jnp.asarray(q), kpool, vpool, table,
                     jnp.asarray(lengths, jnp.int32), impl=impl)
  np.testing.assert_allclose(np.asarray(got), _reference(q, xk, xv, lengths),
                             atol=1e-5, rtol=1e-5)


def test_stale_pages_past_the_fill_never_matter():
  xk, kpool, table = _pool(2, seed=4)
  q = jnp.asarray(np.random.RandomState(5).normal(size=(2, 2, 2, 8)),
                  jnp.float32)
  lengths = jnp.asarray([3, 6], jnp.int32)
  base = paged.attend(q, kpool, kpool, table, lengths)
  # Huge finite keys and values in every page past each row's fill.
  spoil = kpool.at[:, table[:, 2:].ravel()].set(1e30)
  np.testing.assert_array_equal(np.asarray(paged.attend(
      q, spoil, spoil, table, lengths)), np.asarray(base))


def test_bad_settings_raise():
  _, pool, table = _pool(1)
  q = jnp.zeros((1, 2, 1, 8))
  with pytest.raises(ValueError, match="rollout.attention"):
    paged.attend(q, pool, pool, table, jnp.ones(1, jnp.int32), impl="ragged")
  with pytest.raises(ValueError, match="needs 5 pages"):
    paged.write_prompt(pool, jnp.zeros((1, 2, 17, 8)), table)
