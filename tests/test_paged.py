"""poly_epo.models.paged: page allocation checked by brute force (each
row's own pages, a prompt's full pages shared, counts that add up, the
longest prefix admitted), prompt writes read back, and paged attention =
a NumPy softmax over each row's filled slots ("window", "full", and the
Pallas TPU kernel in interpret mode)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from poly_epo.models import paged


def _allocate(plen, ok, pool, k=3, L=5, page=4, m=4, refs=None):
  refs = jnp.zeros(pool + 1, jnp.int32) if refs is None else refs
  out = paged.allocate(refs, jnp.asarray(plen, jnp.int32),
                       jnp.asarray(ok), num_samples=k, max_new_tokens=L,
                       page=page, pages_per_row=m)
  return tuple(np.asarray(x) for x in out)


def test_allocation_by_brute_force():
  k, L, page, m = 3, 5, 4, 4
  plen = np.array([9, 2, 4, 0, 7])
  ok = np.array([True, True, True, False, True])
  pool = 40
  refs, table, taken = _allocate(plen, ok, pool, k, L, page, m)
  dump = pool
  need = []
  for b, n in enumerate(plen):
    shared = n // page
    own = -(-(n + L) // page) - shared  # Pages to plen + L, per sample.
    need.append(shared + k * own if ok[b] else 0)
  # The longest prefix of candidates whose pages fit the pool.
  fits = np.cumsum(need) <= pool
  np.testing.assert_array_equal(taken, fits)
  holders = {}
  for b, n in enumerate(plen):
    rows = table[b * k:(b + 1) * k]
    if not (ok[b] and fits[b]):
      assert (rows == dump).all()
      continue
    shared = n // page
    own = -(-(n + L) // page) - shared
    for j in range(k):
      used = rows[j][rows[j] != dump]
      assert len(used) == shared + own
      assert (rows[j][:shared + own] != dump).all()  # In order, from 0.
      np.testing.assert_array_equal(rows[j][:shared], rows[0][:shared])
      for e in used:
        holders[e] = holders.get(e, 0) + 1
  counts = np.zeros(pool + 1, int)
  for e, c in holders.items():
    counts[e] = c
  np.testing.assert_array_equal(refs, counts)
  # Shared prompt pages are held k times, every other page once.
  assert set(holders.values()) <= {1, k}
  assert sum(v == k for v in holders.values()) == sum(
      (n // page) for b, n in enumerate(plen) if ok[b] and fits[b])


def test_admission_stops_at_the_first_prompt_that_does_not_fit():
  # A prompt of 2 tokens, 3 samples of up to 5: 3 x 2 pages of 4 slots.
  refs, table, taken = _allocate([2, 2, 2], [True] * 3, pool=13)
  np.testing.assert_array_equal(taken, [True, True, False])
  assert refs[:-1].sum() == 12 and (table[6:] == 13).all()
  # Pages in use are not handed out again: one page left.
  _, _, taken2 = _allocate([2], [True], pool=13, refs=jnp.asarray(refs))
  np.testing.assert_array_equal(taken2, [False])
  freed = paged.hold(jnp.asarray(refs), jnp.asarray(table), -1)
  assert int(jnp.sum(freed)) == 0 and int(paged.free_pages(freed)) == 13


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
