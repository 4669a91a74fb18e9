"""poly_epo.engine.kernels: the contiguous cache's kernels against a NumPy
softmax over each row's filled slots (the Pallas GPU kernel in interpret
mode on CPU); a row's
output is bit-for-bit independent of the other rows (how many blocks the
batch reads), which the engine's exactness rests on; the registry refuses
duplicates and unknown names, and a kernel registered in one module is
usable by name."""

import jax.numpy as jnp
import numpy as np
import pytest

from poly_epo.engine import kernels


def attend_filled(q, k, v, lengths, *, impl="window", block=16, window=None,
                  keys_ch=False, platform="cpu"):
  return kernels.attend(impl, q, k, v, lengths, block=block, window=window,
                        keys_ch=keys_ch, platform=platform)

N, K, G, H, C = 5, 2, 3, 8, 64


def _inputs(seed=0):
  rs = np.random.RandomState(seed)
  q = rs.randn(N, K, G, H).astype(np.float32)
  k = rs.randn(N, K, H, C).astype(np.float32)
  v = rs.randn(N, K, C, H).astype(np.float32)
  lengths = np.array([1, 7, 16, 17, 40], np.int32)
  return q, k, v, lengths


def _reference(q, k, v, lengths):
  out = np.zeros_like(q)
  for n in range(N):
    s = np.einsum("kgh,khs->kgs", q[n], k[n, :, :, :lengths[n]]) / np.sqrt(H)
    p = np.exp(s - s.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    out[n] = np.einsum("kgs,ksh->kgh", p, v[n, :, :lengths[n]])
  return out


@pytest.mark.parametrize("keys_ch", [False, True])
@pytest.mark.parametrize("impl,block", [("window", 16), ("window", 8),
                                        ("ragged", 16), ("full", 16),
                                        ("pallas", 16)])
def test_equals_softmax_over_the_filled_slots(impl, block, keys_ch):
  q, k, v, lengths = _inputs()
  k_in = np.swapaxes(k, 2, 3) if keys_ch else k  # [N, K, C, H] layout.
  got = attend_filled(jnp.asarray(q), jnp.asarray(k_in), jnp.asarray(v),
                      jnp.asarray(lengths), impl=impl, block=block,
                      keys_ch=keys_ch)
  np.testing.assert_allclose(np.asarray(got), _reference(q, k, v, lengths),
                             atol=1e-5, rtol=1e-5)


def test_stale_slots_past_the_fill_never_matter():
  """Keys may hold anything (NaN included; for the Pallas kernel anything
  finite), values anything finite."""
  q, k, v, lengths = _inputs()
  for impl in ("window", "ragged", "pallas"):
    k2, v2 = k.copy(), v.copy()
    for n in range(N):
      k2[n, :, :, lengths[n]:] = 1e4 if impl == "pallas" else np.nan
      v2[n, :, lengths[n]:] = 1e30
    got = attend_filled(jnp.asarray(q), jnp.asarray(k2), jnp.asarray(v2),
                        jnp.asarray(lengths), impl=impl, block=16)
    np.testing.assert_allclose(np.asarray(got), _reference(q, k, v, lengths),
                               atol=1e-5, rtol=1e-5, err_msg=impl)


def test_static_window_matches_the_dynamic_one():
  q, k, v, lengths = _inputs()
  args = (jnp.asarray(q), jnp.asarray(k), jnp.asarray(v), jnp.asarray(lengths))
  dyn = attend_filled(*args, impl="window", block=16)
  static = attend_filled(*args, impl="window", block=16, window=48)
  np.testing.assert_allclose(np.asarray(dyn), np.asarray(static), atol=1e-6)


@pytest.mark.parametrize("keys_ch", [False, True])
def test_a_row_does_not_depend_on_the_batch(keys_ch):
  """Row 0 (1 slot) alone, and beside a row that makes the batch read every
  block: identical bits (both key layouts)."""
  q, k, v, lengths = _inputs()
  if keys_ch:
    k = np.swapaxes(k, 2, 3)
  alone = attend_filled(jnp.asarray(q[:1]), jnp.asarray(k[:1]),
                        jnp.asarray(v[:1]), jnp.asarray(lengths[:1]),
                        block=8, keys_ch=keys_ch)
  lengths2 = lengths.copy()
  lengths2[1] = C
  batch = attend_filled(jnp.asarray(q[:2]), jnp.asarray(k[:2]),
                        jnp.asarray(v[:2]), jnp.asarray(lengths2[:2]),
                        block=8, keys_ch=keys_ch)
  np.testing.assert_array_equal(np.asarray(alone)[0], np.asarray(batch)[0])


def test_bad_settings_raise():
  q, k, v, lengths = (jnp.asarray(x) for x in _inputs())
  with pytest.raises(ValueError, match="rollout.attention"):
    attend_filled(q, k, v, lengths, impl="paged")
  with pytest.raises(ValueError, match="multiple of the block"):
    attend_filled(q, k, v, lengths, block=48)
  with pytest.raises(ValueError, match=">= 16 slots"):
    attend_filled(q, k, v, lengths, impl="pallas", block=8)


def test_the_registry():
  """A kernel is one registration: its name is then valid everywhere
  (`rollout.attention`, the config check, "auto" rules); a second one of
  the same name is refused."""
  assert {"window", "full", "ragged", "pallas", "tpu_paged",
          "auto"} <= set(kernels.names())
  window = kernels.get("window")
  with pytest.raises(ValueError, match="registered twice"):
    kernels.register(window)
  probe = kernels.Kernel(
      "probe_scaled", lambda q, k, v, n, **kw: 2 * window.attend(
          q, k, v, n, **kw), runs={"contiguous": ("cpu",)})
  kernels.register(probe)
  try:
    q, k, v, lengths = (jnp.asarray(x) for x in _inputs())
    np.testing.assert_allclose(
        np.asarray(attend_filled(q, k, v, lengths, impl="probe_scaled")),
        2 * np.asarray(attend_filled(q, k, v, lengths)), rtol=1e-6)
    assert kernels.resolve("probe_scaled", "auto", "cpu") == (
        "contiguous", "probe_scaled")
    with pytest.raises(ValueError, match="does not run on gpu"):
      kernels.resolve("probe_scaled", "auto", "gpu")
  finally:
    del kernels._REGISTRY["probe_scaled"]


def test_prefix_kernel_equals_softmax_over_prompt_then_response():
  """The prefix cache (each prompt once, a response row per sample) against
  the NumPy softmax over the packed row: prompt slots, then response; stale
  slots (NaN keys, huge finite values) past either part never matter."""
  from poly_epo.engine.kernels.prefix import write_token
  rs = np.random.RandomState(3)
  b, j, p, l = 3, 2, 6, 5
  n = b * j
  plen = np.repeat(np.array([6, 2, 4], np.int32), j)
  fill = np.array([1, 3, 5, 2, 4, 1], np.int32)  # response slots, new one in
  q = rs.randn(n, K, G, H).astype(np.float32)
  kp = rs.randn(b, K, H, p).astype(np.float32)
  vp = rs.randn(b, K, p, H).astype(np.float32)
  kr = rs.randn(n, K, H, l).astype(np.float32)
  vr = rs.randn(n, K, l, H).astype(np.float32)
  packed_k = np.zeros((n, K, H, p + l), np.float32)
  packed_v = np.zeros((n, K, p + l, H), np.float32)
  for r in range(n):
    pb = plen[r]
    packed_k[r, :, :, :pb] = kp[r // j, :, :, :pb]
    packed_k[r, :, :, pb:pb + l] = kr[r]
    packed_v[r, :, :pb] = vp[r // j, :, :pb]
    packed_v[r, :, pb:pb + l] = vr[r]
    kp[r // j, :, :, pb:] = np.nan  # Stale prompt slots.
    vp[r // j, :, pb:] = 1e30
    kr[r, :, :, fill[r]:] = np.nan
    vr[r, :, fill[r]:] = 1e30
  # The newest token's key and value go in through the layout's write.
  new_k, new_v = rs.randn(2, n, K, H).astype(np.float32)
  slot = plen + fill - 1
  for r in range(n):
    packed_k[r, :, :, slot[r]] = new_k[r]
    packed_v[r, :, slot[r]] = new_v[r]
  kc = write_token((jnp.asarray(kp), jnp.asarray(kr)), jnp.asarray(new_k),
                   jnp.asarray(plen), jnp.asarray(slot), keys=True)
  vc = write_token((jnp.asarray(vp), jnp.asarray(vr)), jnp.asarray(new_v),
                   jnp.asarray(plen), jnp.asarray(slot), keys=False)
  got = kernels.attend("prefix", jnp.asarray(q), kc, vc,
                       jnp.asarray(plen + fill), block=16, window=None,
                       keys_ch=False, table_NM=jnp.asarray(plen),
                       platform="cpu")
  want = np.zeros_like(q)
  for r in range(n):
    m = plen[r] + fill[r]
    s = np.einsum("kgh,khs->kgs", q[r], packed_k[r, :, :, :m]) / np.sqrt(H)
    w = np.exp(s - s.max(-1, keepdims=True))
    w /= w.sum(-1, keepdims=True)
    want[r] = np.einsum("kgs,ksh->kgh", w, packed_v[r, :, :m])
  np.testing.assert_allclose(np.asarray(got), want, atol=1e-5, rtol=1e-5)
