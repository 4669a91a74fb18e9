"""Rollouts of any size in bounded memory, on one device, a mesh or a pod.

`rollout(...)` samples N completions for this process's share of a batch of
prompts, `chunk_prompts` prompts (across all processes) at a time, so the KV
cache of one chunk, not of the whole batch, is what must fit. Prompt groups
stay whole. Every prompt's randomness is `fold_in(rng, prompt_id)` with its
*global* id, so chunking, the process count and padding change no sample
(tests/test_rollout.py).

The sampler runs in the compute dtype: the f32 master weights are cast once
per rollout (`cast_params`), not once per decode step, and the KV cache is
created in that dtype.

Multi-host: every process passes its own contiguous block of the batch; each
chunk is a global array assembled with `jax.make_array_from_process_local_data`
(`sharding.global_batch`), decoded by one SPMD program over the whole mesh,
and each process takes back its own rows (`sharding.local_rows`).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import tqdm
from flax import nnx

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


def rollout(graphdef, params, rest, prompt_tokens, prompt_mask, prompt_ids, *,
            rng, num_samples: int, max_new_tokens: int, eos_id, pad_id: int,
            temperature: float = 1.0, top_p: float = 1.0, top_k: int = 0,
            chunk_prompts: int = 0, mesh=None, compute_dtype: str | None = None,
            progress: bool = False) -> sampling.SampleOutput:
  """Sample `num_samples` completions per prompt of this process's share.

  Args:
    graphdef, params, rest: the split policy (`nnx.split(model, nnx.Param,
      ...)`); params may be sharded global arrays.
    prompt_tokens, prompt_mask: NumPy [B_local, P], left-padded: this
      process's contiguous block of the batch (the whole batch on one host).
    prompt_ids: int [B_local] global prompt ids (seed each prompt's samples).
    rng: the rollout's PRNG key.
    chunk_prompts: prompts per generate call summed over all processes (0 =
      all at once); a short last chunk is padded with empty rows.
    mesh: the device mesh (None: the default device).
    compute_dtype: sampler dtype (None: the params' own).

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
  if mesh is not None:  # Whole rows per device: round up to its multiple.
    per = max(sharding.batch_shards(mesh) // procs, 1)
    chunk = -(-chunk // per) * per
  if compute_dtype:
    params = cast_params(params, compute_dtype)
  model = nnx.merge(graphdef, params, rest)
  keys = np.asarray(_prompt_keys(rng, prompt_ids))
  outs = []
  starts = range(0, b, chunk)
  for s in tqdm.tqdm(starts, desc="rollout", disable=not progress or
                     len(starts) < 2, leave=False):
    tok, msk, key = (a[s:s + chunk] for a in (prompt_tokens, prompt_mask, keys))
    n = tok.shape[0]
    if n < chunk:  # Same shapes for every chunk: pad with empty rows.
      pad = chunk - n
      tok = np.concatenate([tok, np.zeros((pad,) + tok.shape[1:], tok.dtype)])
      msk = np.concatenate([msk, np.zeros((pad,) + msk.shape[1:], bool)])
      key = np.concatenate([key, np.repeat(key[:1], pad, 0)])
    if mesh is not None:
      tok, msk, key = (sharding.global_batch(mesh, a) for a in (tok, msk, key))
    out = sampling.generate(
        model, tok, msk, num_samples=num_samples,
        max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p,
        top_k=top_k, eos_id=eos_id, rng=jax.random.wrap_key_data(key),
        pad_id=pad_id, mesh=mesh)
    fetch = (lambda x: sharding.local_rows(mesh, x)) if mesh is not None \
        else np.asarray
    outs.append([fetch(x)[:n] for x in out])
  return sampling.SampleOutput(*(np.concatenate(parts)
                                 for parts in zip(*outs)))
