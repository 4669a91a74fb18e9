"""Rollouts of any size in bounded memory, on one device, a mesh or a pod.

`rollout(...)` samples N completions for this process's share of a batch of
prompts with the rollout engine (`poly_epo/engine.py`, docs/ROLLOUT.md):
`engine="static"` decodes `chunk_prompts` prompts (across all processes) at
a time in lock-step, so the KV cache of one chunk, not of the whole batch,
is what must fit; `engine="continuous"` keeps `slots` decode slots busy
with the whole batch's queue. Prompt groups stay whole. Every prompt's
randomness is `fold_in(rng, prompt_id)` with its *global* id, so the
schedule, chunking, the process count and padding change no sample
(tests/test_rollout.py, tests/test_engine.py).

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

from poly_epo import engine as engine_lib
from poly_epo import engine_host
from poly_epo import sampling, sharding


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
            rng, num_samples: int, max_new_tokens: int, eos_id, pad_id: int,
            temperature: float = 1.0, top_p: float = 1.0, top_k: int = 0,
            chunk_prompts: int = 0, mesh=None, compute_dtype: str | None = None,
            progress: bool = False, engine: str = "static", slots: int = 0,
            refill: int = 1, attention: str = "window", on_done=None,
            stats: dict | None = None, cache: str = "contiguous",
            page_size: int = 0, pages: int = 0, stop_check=None,
            **engine_args
            ) -> sampling.SampleOutput:
  """Sample `num_samples` completions per prompt of this process's share.

  Args:
    graphdef, params, rest: the split policy (`nnx.split(model, nnx.Param,
      ...)`); params may be sharded global arrays.
    prompt_tokens, prompt_mask: NumPy [B_local, P], left-padded: this
      process's contiguous block of the batch (the whole batch on one host).
    prompt_ids: int [B_local] global prompt ids (seed each prompt's samples).
    rng: the rollout's PRNG key.
    chunk_prompts: static engine: prompts per decode loop summed over all
      processes (0 = all at once); a short last chunk is padded with empty
      rows. Continuous engine: sets the default `slots` (chunk x k).
    mesh: the device mesh (None: the default device).
    compute_dtype: sampler dtype (None: the params' own).
    engine: "static" (chunks in lock-step) or "continuous" (decode slots
      refilled from the queue of the whole batch); the same tokens either way.
    slots: continuous decode slots summed over all devices (0: chunk_prompts
      x num_samples, or every row).
    refill: prompts prefilled per refill (continuous).
    attention: decode attention (`decode_attention.IMPLEMENTATIONS`).
    cache: "contiguous" (a cache row per slot), "paged" (a pool of
      `page_size`-slot pages, prompts shared by their samples; `pages`
      over all devices, 0 = the contiguous cache's memory; continuous with
      no `slots`: a slot per row in the memory of chunk x k rows) or
      "auto" (paged with the TPU kernel on TPU, else contiguous).
    on_done: `on_done(local_prompt_indices, tokens [n, k, L], mask)` as
      prompts finish, while the rest decode (score-while-decoding).
    stats: a dict to fill with the engine's counters (summed over loops).
    stop_check: called before each chunk; it raises to stop the rollout
      (a stop request during an evaluation).
    **engine_args: further `engine.plan_spec` settings (block, narrow:
      "auto" | "on" | "off", the continuous engine's narrowing tail;
      forced_lengths for benchmarks).

  Returns:
    `SampleOutput` of NumPy arrays for this process's prompts: [B_local, N, L].
  """
  prompt_tokens = np.asarray(prompt_tokens, np.int32)
  prompt_mask = np.asarray(prompt_mask, bool)
  b = prompt_tokens.shape[0]
  procs = jax.process_count()
  chunk = (chunk_prompts or b * procs) // procs
  if chunk < 1:
    raise ValueError(f"rollout.chunk_prompts={chunk_prompts} must be at least "
                     f"the process count ({procs})")
  chunk = min(chunk, b)
  per = 1
  if mesh is not None:  # Whole rows per device: round up to its multiple.
    per = max(sharding.batch_shards(mesh) // procs, 1)
    chunk = -(-chunk // per) * per
  pool_rows = 0
  if engine == "continuous":
    paged = engine_lib.resolve_cache(
        cache, attention, engine_lib.platform_of(mesh)) == "paged"
    if paged and not slots:  # A slot per row, pages as the chunk's memory.
      pool_rows = chunk * procs * num_samples
    else:
      slots = slots or chunk * procs * num_samples
    chunk = -(-b // per) * per  # One loop over the whole batch.
  params = decode_params(params, mesh, compute_dtype)
  graph, state = nnx.split(nnx.merge(graphdef, params, rest))
  keys = np.asarray(_prompt_keys(rng, prompt_ids))
  spec_args = dict(num_samples=num_samples, max_new_tokens=max_new_tokens,
                   temperature=temperature, top_k=top_k, top_p=top_p,
                   eos_id=-1 if eos_id is None else int(eos_id),
                   pad_id=int(pad_id), engine=engine, refill=refill,
                   attention=attention, cache=cache, page_size=page_size,
                   **engine_args)
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
    out = engine_host.run(graph, state, tok, msk, key, spec_args=spec_args,
                          slots=slots, pages=pages, pool_rows=pool_rows,
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
