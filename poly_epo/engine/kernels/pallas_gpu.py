""""pallas": JAX's Pallas (Triton) GPU decode kernel
(`jax.experimental.pallas.ops.gpu.decode_attention.gqa`) over the
contiguous cache: each row reads only its own filled blocks, split over
`k_splits` ranges of the cache that run in parallel. On CPU it runs in
Pallas's interpret mode (tests only: slow); TPU is refused (its Pallas
kernels need the paged cache: "tpu_paged")."""

from __future__ import annotations

import jax.numpy as jnp

from poly_epo.engine.kernels import Kernel, register
from poly_epo.engine.kernels.dense import largest_divisor


def attend(q, k_cache, v_cache, length_N, *, block, window=None,
           keys_ch=False, table_NM=None, platform="gpu"):
  del window, table_NM
  from jax.experimental.pallas.ops.gpu import decode_attention as kernel
  n, kh, g, h = q.shape
  c = v_cache.shape[2]
  if block < 16:
    raise ValueError(f"rollout.attention='pallas' needs blocks of >= 16 "
                     f"slots (block={block})")
  # The kernel takes [N, C, K, H]; our [N, K, C, H] goes in swapped, and
  # XLA cancels the kernel wrapper's swap back.
  k = jnp.swapaxes(k_cache, 1, 2) if keys_ch else jnp.moveaxis(k_cache, 3, 1)
  out = kernel.gqa(q.reshape(n, kh * g, h), k, jnp.swapaxes(v_cache, 1, 2),
                   kv_seq_len=length_N.astype(jnp.int32), block_k=block,
                   k_splits=largest_divisor(c // block, 16),
                   interpret=platform == "cpu")
  return out.reshape(n, kh, g, h).astype(q.dtype)


register(Kernel(
    "pallas", attend, runs={"contiguous": ("gpu", "cpu")},
    auto=(("gpu", "contiguous", "*"),), planned_as="window", own_fill=True,
    refuse={"tpu": "it is the GPU decode kernel; on TPU use 'tpu_paged' "
            "with rollout.cache='paged', or 'window'"}))
