"""The rollout engine's host side: `run` drives the device programs of
`loop.py` (`begin`, then `segment` until no device has work left), hands
finished prompts to `on_done` between segments while the devices decode the
next one, and gathers this process's rows and the engine's counters.

Every process makes the same calls and fetches the same arrays (SPMD), so
multi-host runs stay in step (tests/test_multihost.py).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from poly_epo import distributed, sharding
from poly_epo.engine.loop import Consts, begin, pack_prompts, segment
from poly_epo.engine.settings import RolloutSettings, platform_of
from poly_epo.engine.spec import plan_spec


class Result(NamedTuple):
  """NumPy outputs for this process's prompts: tokens / logprobs / mask
  [B, k, L], lengths [B, k], and `stats`: decode steps (the longest device
  loop), slot_steps (row-steps executed: each step's width, summed over
  devices), busy_steps (row-steps of busy slots), segments (host round
  trips)."""
  tokens: np.ndarray
  logprobs: np.ndarray
  mask: np.ndarray
  lengths: np.ndarray
  stats: dict


def _local(mesh, x) -> np.ndarray:
  return np.asarray(x) if mesh is None else sharding.local_rows(mesh, x)


def _rows(mesh, x, shards: int) -> np.ndarray:
  """This process's rows of a per-device [R + 1, ...] output, spare rows
  dropped."""
  x = _local(mesh, x)
  x = x.reshape((shards, -1) + x.shape[1:])[:, :-1]
  return x.reshape((-1,) + x.shape[2:])


def run(graphdef, params, prompt_tokens, prompt_mask, prompt_key_data, *,
        settings: RolloutSettings, slots: int = 0, pages: int = 0,
        pool_rows: int = 0, mesh=None, on_done=None) -> Result:
  """Decode this process's prompts with the engine.

  Args:
    graphdef, params: the split sampler (`nnx.split(model)`), params laid
      out for decoding (see `rollout.decode_params`).
    prompt_tokens, prompt_mask: NumPy [B, P] (any padding side); with a mesh
      this process's contiguous block, B a multiple of its devices' share.
    prompt_key_data: uint32 [B, 2] per-prompt key data.
    settings: the rollout's resolved settings (`engine.settings`), for
      the mesh's platform.
    slots: decode slots summed over all devices (continuous engine; 0 = as
      many as rows).
    pages: paged cache: pool pages summed over all devices (0: the memory
      of `pool_rows` contiguous rows, or of `slots` rows).
    on_done: called as `on_done(prompt_indices, tokens [n, k, L], mask
      [n, k, L])` for prompts whose k samples have all ended, while the
      others decode; each prompt once.
  """
  packed, plen = pack_prompts(prompt_tokens, prompt_mask)
  key_data = np.asarray(prompt_key_data, np.uint32)
  b = packed.shape[0]
  shards = (sharding.batch_shards(mesh) // jax.process_count()) if mesh else 1
  if b % shards:
    raise ValueError(f"engine: {b} prompts do not split over {shards} "
                     "devices (pad the batch)")
  total = shards * jax.process_count()
  if settings.platform != platform_of(mesh):
    raise ValueError(f"engine: settings for {settings.platform}, devices "
                     f"are {platform_of(mesh)}")
  segment_steps = settings.segment_steps
  if not segment_steps and on_done is not None:
    segment_steps = max(16, settings.max_new_tokens // 8)
  spec = plan_spec(settings, batch_dev=b // shards,
                   prompt_width=packed.shape[1],
                   slots_dev=slots // total if slots else 0,
                   pages_dev=pages // total if pages else 0,
                   pool_rows_dev=pool_rows // total,
                   segment_steps=segment_steps)
  put = (lambda a: jnp.asarray(a)) if mesh is None else (
      lambda a: sharding.global_batch(mesh, a))
  c = Consts(put(packed), put(plen), put(key_data))
  st, more = begin(graphdef, params, c, spec=spec, mesh=mesh)
  k, segments = spec.num_samples, 1
  reported = plen == 0
  while True:
    last = not bool(more)
    if on_done is not None:  # Every process fetches, fresh or not (SPMD).
      fresh = (_local(mesh, st.finished_B) >= k) & ~reported
      idx = np.flatnonzero(fresh)
      tok = _rows(mesh, st.tokens_RL, shards).reshape(b, k, -1)[idx]
      lens = _rows(mesh, st.length_R, shards).reshape(b, k)[idx]
      reported |= fresh
    else:
      fresh = np.zeros(b, bool)
    if last:
      break
    st, more = segment(graphdef, params, st, c, spec=spec, mesh=mesh)
    segments += 1
    if fresh.any():  # While the device decodes the next segment.
      on_done(idx, tok, np.arange(tok.shape[-1]) < lens[..., None])
  if fresh.any():
    on_done(idx, tok, np.arange(tok.shape[-1]) < lens[..., None])
  tokens = _rows(mesh, st.tokens_RL, shards).reshape(b, k, -1)
  logprobs = _rows(mesh, st.logprobs_RL, shards).reshape(b, k, -1)
  lengths = _rows(mesh, st.length_R, shards).reshape(b, k)
  mask = np.arange(tokens.shape[-1]) < lengths[..., None]
  steps = distributed.host_value(st.steps_1)
  busy = distributed.host_value(st.busy_1)
  executed = distributed.host_value(st.rows_1)
  stats = {"steps": int(steps.max()),
           "slot_steps": int(executed.sum()),
           "busy_steps": int(busy.sum()), "segments": segments,
           "slots": spec.slots * total, "cache_len": spec.cache_len}
  if st.pages is not None:  # Pool use: the most pages a device held.
    pg = st.pages
    stats.update(pages=spec.pages * total, page_size=spec.page,
                 pages_peak=int(distributed.host_value(pg.peak_1).max()),
                 page_waits=int(distributed.host_value(pg.waits_1).sum()),
                 pages_leaked=int(distributed.host_value(pg.refs_P).sum()))
  return Result(tokens, np.where(mask, logprobs, 0.0).astype(np.float32),
                mask, lengths.astype(np.int32), stats)
