""""tpu_paged": JAX's Pallas TPU paged-attention kernel
(`jax.experimental.pallas.ops.tpu.paged_attention`) over the paged cache:
each row reads only its own filled pages, straight from the pool. Off TPU
it runs in Pallas's TPU interpret mode (CPU tests; it rounds matmul inputs
to bfloat16 like a TPU's default precision); GPU is refused."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

from poly_epo.engine.kernels import Kernel, register
from poly_epo.engine.kernels.dense import largest_divisor


def attend(q_NKGH, k_pool, v_pool, length_N, *, block, window=None,
           keys_ch=True, table_NM=None, platform="tpu"):
  """The kernel on each device's kv heads."""
  del block, window, keys_ch
  from jax.experimental.pallas import tpu as pltpu
  from jax.experimental.pallas.ops.tpu.paged_attention import (
      paged_attention)
  n, kh, g, h = q_NKGH.shape
  q = (q_NKGH.astype(jnp.float32) * h**-0.5).astype(q_NKGH.dtype)
  interpret = platform != "tpu"

  def kernel(*args):
    call = functools.partial(paged_attention, *args,
                             pages_per_compute_block=largest_divisor(
                                 table_NM.shape[1], 8))
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


register(Kernel(
    "tpu_paged", attend, runs={"paged": ("tpu", "cpu")},
    auto=(("tpu", "paged", "*"),), planned_as="window", own_fill=True,
    refuse={"gpu": "it is the Pallas TPU kernel; on GPU use 'window' (or "
            "'pallas' with rollout.cache='contiguous')"}))
