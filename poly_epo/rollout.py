"""Rollouts of any size in bounded memory, on one device, a mesh or a pod.

`rollout(...)` samples N completions for this process's share of a batch of
prompts with the rollout engine (`poly_epo/engine/`, docs/ROLLOUT.md), as
its `RolloutSettings` say (`engine.settings`, resolved once per run):
`engine="static"` decodes `chunk_prompts` prompts (across all processes) at
a time in lock-step, so the KV cache of one chunk, not of the whole batch,
is what must fit; `engine="continuous"` keeps `slots` decode slots busy
with the whole batch's queue. Prompt groups stay whole. Every prompt's
randomness is `fold_in(rng, prompt_id)` with its *global* id, so the
schedule, chunking, the process count and padding change no sample
(tests/test_rollout.py, tests/test_engine_loop.py).

The sampler runs in the compute dtype: the f32 master weights are cast once
per rollout (`cast_params`), not once per decode step, laid out for decoding
(`decode_params`), and the KV cache is created in that dtype.

Multi-host: every process passes its own contiguous block of the batch; it
becomes a global array (`sharding.global_batch`), each device decodes its
own block of it, and each process takes back its own rows.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import tqdm
from flax import nnx

from poly_epo import sampling, sharding
from poly_epo.engine import host
from poly_epo.engine.settings import RolloutSettings


@functools.partial(jax.jit, static_argnames=("dtype",))
def _cast(params, dtype):
  return jax.tree.map(
      lambda x: x.astype(dtype) if jnp.issubdtype(x.dtype, jnp.floating)
      else x, params)


def cast_params(params, dtype: str):
  """The params in `dtype` (shardings kept); the same tree if already so."""
  leaves = jax.tree.leaves(params)
  if all(x.dtype == jnp.dtype(dtype) for x in leaves
         if jnp.issubdtype(x.dtype, jnp.floating)):
    return params
  return _cast(params, dtype)


def _prompt_keys(rng, ids):
  return jax.random.key_data(jax.vmap(
      lambda i: jax.random.fold_in(rng, i))(jnp.asarray(ids, jnp.int32)))


def _report(on_done, idx, tokens, mask, *, start: int, real: int):
  """A chunk's finished prompts, as indices of the whole batch (padding
  prompts dropped)."""
  keep = idx < real
  if keep.any():
    on_done(idx[keep] + start, tokens[keep], mask[keep])


def decode_params(params, mesh, dtype: str | None):
  """The sampler's copy of the weights: in `dtype` (cast once per rollout,
  not per step) and laid out for decoding (`sharding.decode_shardings`:
  replicated over the batch axes, so no decode step talks across them)."""
  if dtype:
    params = cast_params(params, dtype)
  if mesh is None:
    return params
  return jax.device_put(params, sharding.decode_shardings(params, mesh))


def rollout(graphdef, params, rest, prompt_tokens, prompt_mask, prompt_ids, *,
            rng, settings: RolloutSettings, mesh=None,
            compute_dtype: str | None = None, progress: bool = False,
            on_done=None, stats: dict | None = None, stop_check=None
            ) -> sampling.SampleOutput:
  """Sample `settings.num_samples` completions per prompt of this process's
  share.

  Args:
    graphdef, params, rest: the split policy (`nnx.split(model, nnx.Param,
      ...)`); params may be sharded global arrays.
    prompt_tokens, prompt_mask: NumPy [B_local, P], left-padded: this
      process's contiguous block of the batch (the whole batch on one host).
    prompt_ids: int [B_local] global prompt ids (seed each prompt's samples).
    rng: the rollout's PRNG key.
    settings: the rollout's settings (`engine.settings.make` /
      `from_config`) for the mesh's platform: the sampling rule, lengths,
      EOS / pad, the schedule ("static": `chunk_prompts` prompts, summed
      over all processes, per lock-step loop, 0 = all at once, a short last
      chunk padded with empty rows; "continuous": `slots` decode slots over
      all devices, 0 = chunk_prompts x num_samples or every row, refilled
      from the queue of the whole batch), the cache ("paged": `pages` over
      all devices, 0 = the contiguous cache's memory; continuous with no
      `slots`: a slot per row in the memory of chunk x k rows) and kernel.
      The same tokens whatever the schedule, cache or kernel.
    mesh: the device mesh (None: the default device).
    compute_dtype: sampler dtype (None: the params' own).
    on_done: `on_done(local_prompt_indices, tokens [n, k, L], mask)` as
      prompts finish, while the rest decode (score-while-decoding).
    stats: a dict to fill with the engine's counters (summed over loops).
    stop_check: called before each chunk; it raises to stop the rollout
      (a stop request during an evaluation).

  Returns:
    `SampleOutput` of NumPy arrays for this process's prompts: [B_local, N, L].
  """
  prompt_tokens = np.asarray(prompt_tokens, np.int32)
  prompt_mask = np.asarray(prompt_mask, bool)
  b = prompt_tokens.shape[0]
  procs = jax.process_count()
  k = settings.num_samples
  chunk = (settings.chunk_prompts or b * procs) // procs
  if chunk < 1:
    raise ValueError(f"rollout.chunk_prompts={settings.chunk_prompts} must "
                     f"be at least the process count ({procs})")
  chunk = min(chunk, b)
  per = 1
  if mesh is not None:  # Whole rows per device: round up to its multiple.
    per = max(sharding.batch_shards(mesh) // procs, 1)
    chunk = -(-chunk // per) * per
  slots, pool_rows = settings.slots, 0
  if settings.engine == "continuous":
    if settings.cache == "paged" and not slots:  # A slot per row, pages
      pool_rows = chunk * procs * k  # as the chunk's memory.
    else:
      slots = slots or chunk * procs * k
    chunk = -(-b // per) * per  # One loop over the whole batch.
  params = decode_params(params, mesh, compute_dtype)
  graph, state = nnx.split(nnx.merge(graphdef, params, rest))
  keys = np.asarray(_prompt_keys(rng, prompt_ids))
  outs = []
  starts = range(0, b, chunk)
  for s in tqdm.tqdm(starts, desc="rollout", disable=not progress or
                     len(starts) < 2, leave=False):
    if stop_check is not None:
      stop_check()
    tok, msk, key = (a[s:s + chunk] for a in (prompt_tokens, prompt_mask, keys))
    n = tok.shape[0]
    if n < chunk:  # Same shapes for every chunk: pad with empty rows.
      pad = chunk - n
      tok = np.concatenate([tok, np.zeros((pad,) + tok.shape[1:], tok.dtype)])
      msk = np.concatenate([msk, np.zeros((pad,) + msk.shape[1:], bool)])
      key = np.concatenate([key, np.repeat(key[:1], pad, 0)])
    done = None if on_done is None else functools.partial(
        _report, on_done, start=s, real=n)
    out = host.run(graph, state, tok, msk, key, settings=settings,
                   slots=slots, pages=settings.pages, pool_rows=pool_rows,
                   mesh=mesh, on_done=done)
    if stats is not None:
      for name, value in out.stats.items():
        add = name in ("steps", "slot_steps", "busy_steps", "segments",
                       "pages_leaked", "page_waits")
        most = name == "pages_peak"
        stats[name] = (stats.get(name, 0) + value if add else
                       max(stats.get(name, 0), value) if most else value)
    outs.append([x[:n] for x in out[:4]])
  return sampling.SampleOutput(*(np.concatenate(parts)
                                 for parts in zip(*outs)))
