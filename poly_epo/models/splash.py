"""`model.attention = "splash"`: the splash-attention Pallas kernel
(`jax.experimental.pallas.ops.tpu.splash_attention`) for the training and
scoring forward on TPU: causal, with the padding mask as segment ids, never
materialising [T, T] scores.

Segment ids: real tokens 1, padding 0 (and the block-padding tail 2). A real
query then sees exactly the real keys at or before it, as in the `einsum` /
`xla` paths; a padding query sees only padding keys (its output differs
from theirs but, as there, feeds no real position and no loss term).

Grouped-query attention runs the kernel in its multi-query form once per KV
head (`vmap` over batch and KV heads). Under a mesh it runs per shard
(`shard_map`: rows over (data, fsdp), KV heads over tensor when they
divide), because XLA cannot partition a kernel call itself. Off TPU (tests
on CPU) the kernel runs in Pallas interpret mode.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import PartitionSpec as P

# None: interpret mode unless the default backend is a TPU. Tests that
# compile for abstract TPU devices on a CPU host set it to False.
INTERPRET: bool | None = None
_BLOCK = 128


def _interpret() -> bool:
  return jax.default_backend() != "tpu" if INTERPRET is None else INTERPRET


def _kernel(groups: int, t: int, interpret: bool):
  from jax.experimental.pallas.ops.tpu.splash_attention import (
      splash_attention_kernel as sk, splash_attention_mask as sm)
  block = 512 if t % 512 == 0 else _BLOCK
  mask = sm.MultiHeadMask([sm.CausalMask((t, t))] * groups)
  sizes = sk.BlockSizes(block_q=block, block_kv=block, block_kv_compute=block,
                        block_q_dkv=block, block_kv_dkv=block,
                        block_kv_dkv_compute=block, block_q_dq=block,
                        block_kv_dq=block)
  return sk.make_splash_mqa_single_device(mask, block_sizes=sizes,
                                          interpret=interpret)


def _local(q_BTKGH, k_BTKH, v_BTKH, seg_BT):
  """Splash attention on one shard; returns [B, T, K, G, H]."""
  from jax.experimental.pallas.ops.tpu.splash_attention import (
      splash_attention_kernel as sk)
  b, t, kh, g, h = q_BTKGH.shape
  pad = -t % _BLOCK
  if pad:
    widths = ((0, 0), (0, pad)) + ((0, 0),) * 3
    q_BTKGH = jnp.pad(q_BTKGH, widths)
    k_BTKH = jnp.pad(k_BTKH, widths[:4])
    v_BTKH = jnp.pad(v_BTKH, widths[:4])
    seg_BT = jnp.pad(seg_BT, ((0, 0), (0, pad)), constant_values=2)
  tp = t + pad
  kernel = _kernel(g, tp, _interpret())
  q = jnp.transpose(q_BTKGH, (0, 2, 3, 1, 4))  # [B, K, G, T, H]
  k = jnp.transpose(k_BTKH, (0, 2, 1, 3))  # [B, K, T, H]
  v = jnp.transpose(v_BTKH, (0, 2, 1, 3))

  def one(q_GTH, k_TH, v_TH, seg_T):
    return kernel(q_GTH, k_TH, v_TH, segment_ids=sk.SegmentIds(seg_T, seg_T))

  per_head = jax.vmap(one, in_axes=(0, 0, 0, None))
  out = jax.vmap(per_head)(q, k, v, seg_BT)  # [B, K, G, T, H]
  return jnp.transpose(out, (0, 3, 1, 2, 4))[:, :t]


def attend_splash(q_BTNH, k_BTKH, v_BTKH, valid_BT):
  """Causal GQA attention with padding; returns [B, T, N, H] like
  `transformer.attend_dpa`."""
  b, t, n, h = q_BTNH.shape
  kh = k_BTKH.shape[2]
  dt = q_BTNH.dtype
  q = (q_BTNH * jnp.asarray(h**-0.5, dt)).reshape(b, t, kh, n // kh, h)
  k, v = k_BTKH.astype(dt), v_BTKH.astype(dt)
  seg = valid_BT.astype(jnp.int32)
  mesh = jax.sharding.get_abstract_mesh()
  if mesh.empty:
    out = _local(q, k, v, seg)
  else:
    rows = tuple(a for a in ("data", "fsdp") if a in mesh.axis_names)
    row_size = int(np.prod([mesh.shape[a] for a in rows]))
    row = rows if rows and b % row_size == 0 else None
    heads = "tensor" if "tensor" in mesh.axis_names and \
        kh % mesh.shape["tensor"] == 0 else None
    spec5, spec4 = P(row, None, heads, None, None), P(row, None, heads, None)
    out = jax.shard_map(_local, mesh=mesh,
                        in_specs=(spec5, spec4, spec4, P(row, None)),
                        out_specs=spec5, check_vma=False)(q, k, v, seg)
  return out.reshape(b, t, n, h).astype(dt)
