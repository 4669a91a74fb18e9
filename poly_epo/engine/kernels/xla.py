"""The XLA decode kernels (every platform): "window", "full", "ragged".

- "window": softmax over the first blocks of `block` slots up to the
  longest row's fill, rounded up to a power of two of blocks. Rows read the
  batch's window, not their own, but nothing past the filled part of the
  batch: a step early in a response reads a short window. Over a paged
  cache it gathers those pages into the contiguous layout first (outputs
  equal to the contiguous cache's bit for bit on XLA:CPU).
- "full": every slot of the cache (the pre-engine sampler's cost); over a
  paged cache, all of a row's pages.
- "ragged": each row reads only its own blocks (`lax.map` over rows, each
  with its own trip count); worth it on CPU only for few long rows.
"""

from __future__ import annotations

import jax

from poly_epo.engine import pool
from poly_epo.engine.kernels import Kernel, register
from poly_epo.engine.kernels.dense import over_window, softmax_attention

ALL = ("cpu", "gpu", "tpu")


def _contiguous(blocks, q, k, v, length, *, block, keys_ch):
  return softmax_attention(q, k, v, length, blocks * block, keys_ch=keys_ch)


def _paged(pages, q, kp, vp, length, table):
  return softmax_attention(q, pool.gather(kp, table, pages),
                           pool.gather(vp, table, pages), length,
                           pages * kp.shape[2], keys_ch=True)


def _cache_len(v, table_NM):
  return v.shape[2] if table_NM is None else table_NM.shape[1] * v.shape[2]


def attend_window(q, k, v, length_N, *, block, window=None, keys_ch=False,
           table_NM=None, platform="cpu"):
  del platform
  c = _cache_len(v, table_NM)
  if table_NM is None:
    if c % block:
      raise ValueError(f"decode attention: cache length {c} is not a "
                       f"multiple of the block ({block})")
    fn = lambda nb, *a: _contiguous(nb, *a, block=block, keys_ch=keys_ch)
    return over_window(fn, length_N, c, block, window, q, k, v, length_N)
  page = v.shape[2]
  return over_window(_paged, length_N, c, page, window, q, k, v, length_N,
                     table_NM)


def attend_full(q, k, v, length_N, *, block, window=None, keys_ch=False,
         table_NM=None, platform="cpu"):
  del block, window, platform
  if table_NM is None:
    return _contiguous(1, q, k, v, length_N, block=v.shape[2],
                       keys_ch=keys_ch)
  return _paged(table_NM.shape[1], q, k, v, length_N, table_NM)


def attend_ragged(q, k, v, length_N, *, block, window=None, keys_ch=False,
           table_NM=None, platform="cpu"):
  del window, table_NM

  def one(args):
    q1, k1, v1, n1 = args
    return attend_window(q1[None], k1[None], v1[None], n1[None],
                         block=block, keys_ch=keys_ch, platform=platform)[0]
  return jax.lax.map(one, (q, k, v, length_N))


register(Kernel(
    "window", attend_window, runs={"contiguous": ALL, "paged": ("cpu", "gpu")},
    auto=(("cpu", "contiguous", "static"), ("tpu", "contiguous", "*"),
          ("cpu", "paged", "*"), ("gpu", "paged", "*")),
    # Found compiling for v5p (libtpu of JAX 0.10.2): the gathered window
    # under lax.switch aborts the TPU compiler (a memory-space assignment
    # check); the TPU kernel is what TPU should run anyway.
    refuse={"tpu": "the gathered window does not compile for TPU: use "
            "'tpu_paged' (or 'auto'), or 'full'"}))
register(Kernel(
    "full", attend_full, runs={"contiguous": ALL, "paged": ALL},
    # Refilled slots on CPU read the whole cache: some busy row is nearly
    # always long, so the window would span almost all of it, and XLA:CPU
    # slicing the window out costs more than the slots it skips (bench-s,
    # `bench rollout --attention full` vs window: +30% useful tok/s at 288
    # slots, +13-26% at 1,024; the same tokens).
    auto=(("cpu", "contiguous", "continuous"),)))
register(Kernel("ragged", attend_ragged, runs={"contiguous": ALL},
                own_fill=True, planned_as="window"))
