"""poly_epo.engine.pool: prompt and token writes read back; the paged
cache's kernels ("window", "full", and the Pallas TPU kernel in interpret
mode) equal a NumPy softmax over each row's filled slots, and stale pages
past a row's fill never matter."""

import jax.numpy as jnp
import numpy as np
import pytest

from poly_epo.engine import kernels
from poly_epo.engine import pool as paged


def _attend(q, kpool, vpool, table, lengths, impl="window"):
  return kernels.attend(impl, q, kpool, vpool, lengths, block=kpool.shape[2],
                        table_NM=table, platform="cpu")


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


@pytest.mark.parametrize("impl", ["window", "full", "tpu_paged"])
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
  got = _attend(jnp.asarray(q), kpool, vpool, table,
                jnp.asarray(lengths, jnp.int32), impl)
  np.testing.assert_allclose(np.asarray(got), _reference(q, xk, xv, lengths),
                             atol=1e-5, rtol=1e-5)


def test_stale_pages_past_the_fill_never_matter():
  xk, kpool, table = _pool(2, seed=4)
  q = jnp.asarray(np.random.RandomState(5).normal(size=(2, 2, 2, 8)),
                  jnp.float32)
  lengths = jnp.asarray([3, 6], jnp.int32)
  base = _attend(q, kpool, kpool, table, lengths)
  # Huge finite keys and values in every page past each row's fill.
  spoil = kpool.at[:, table[:, 2:].ravel()].set(1e30)
  np.testing.assert_array_equal(np.asarray(_attend(
      q, spoil, spoil, table, lengths)), np.asarray(base))


def test_a_prompt_longer_than_a_row_is_refused():
  _, pool, table = _pool(1)
  with pytest.raises(ValueError, match="needs 5 pages"):
    paged.write_prompt(pool, jnp.zeros((1, 2, 17, 8)), table)
