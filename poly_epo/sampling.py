"""Sampling: `generate`, k completions per prompt (the per-token draw is
`engine/draw.py`).

`generate` runs the rollout engine (`poly_epo/engine/`) in its static
schedule: each prompt is prefilled once, its k samples decode in lock-step
(on CPU by default from the prefix cache: the prompt's keys and values
once, each sample's response in a row of its own).

Randomness is per prompt: prompt b uses `fold_in(rng, b)` (or `rng[b]` when a
[B] array of keys is given), sample j of it `fold_in(prompt_key, j)`, and its
t-th token `fold_in(sample_key, t)`. A prompt's samples therefore do not depend
on the other prompts in the batch, on padding rows, on the padded width or on
the engine's schedule.

Returned shapes are [B, k, L] (L = max_new_tokens).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from poly_epo.engine import host, settings
from poly_epo.logprobs import completion_logprobs as \
    completion_logprobs_from_tokens
from poly_epo.models.transformer import Transformer


class SampleOutput(NamedTuple):
  """Completions of `generate`.

  tokens: int32 [B, k, L] sampled tokens; `pad_id` after EOS / early exit.
  logprobs: float32 [B, k, L] log-prob of each sampled token under the policy
    at the sampling temperature, *before* top-k / top-p truncation (the
    distribution the trainer recomputes); 0 where `mask` is False. With
    temperature 0 (greedy) the log-probs are under temperature 1.
  mask: bool [B, k, L] valid completion tokens, ending at and including EOS.
  lengths: int32 [B, k] number of valid tokens.
  """
  tokens: jax.Array
  logprobs: jax.Array
  mask: jax.Array
  lengths: jax.Array


def prompt_keys(rng, batch: int):
  """[B] per-prompt keys from one key (fold_in by index) or a [B] key array."""
  rng = jnp.asarray(rng) if not isinstance(rng, jax.Array) else rng
  is_typed = jnp.issubdtype(rng.dtype, jax.dtypes.prng_key)
  single = rng.ndim == 0 if is_typed else rng.ndim == 1
  if single:
    return jax.vmap(lambda i: jax.random.fold_in(rng, i))(jnp.arange(batch))
  if rng.shape[0] != batch:
    raise ValueError(f"generate: rng holds {rng.shape[0]} keys but there are "
                     f"{batch} prompts")
  return rng


def generate(model: Transformer, prompt_tokens, prompt_mask, *,
             num_samples: int, max_new_tokens: int, eos_id: int | None,
             rng, pad_id: int = 0, mesh=None, attention: str = "auto",
             cache: str = "auto", **sampling) -> SampleOutput:
  """Draw `num_samples` completions for each left-padded prompt.

  Args:
    model: the policy.
    prompt_tokens: int32 [B, P], left-padded.
    prompt_mask: bool or 0/1 [B, P], 1 for real tokens. A row with no real
      token is a padding row (its samples are meaningless but harmless).
    num_samples: k completions per prompt.
    max_new_tokens: L.
    eos_id: stop token; None or negative disables EOS stopping.
    rng: a PRNG key, or a [B] array of per-prompt keys.
    pad_id: token written after EOS.
    mesh: decode on this mesh, each device its block of the prompts (one
      process: B a multiple of the batch shards).
    attention, cache: the decode kernel (`engine.kernels.names()`) and
      the cache layout; "auto" as a run's `rollout.*` (on CPU: the prefix
      cache, each prompt's keys and values held once for its k samples).
    **sampling: the sampling rule (`engine.draw.Sampling`: temperature, 0
      = greedy; top_p, top_k: nucleus / top-k truncation, 1.0 / 0 disable).

  Returns:
    `SampleOutput` with [B, k, L] tokens / logprobs / mask and [B, k] lengths.
  """
  prompt_tokens = jnp.asarray(prompt_tokens, jnp.int32)
  prompt_mask = jnp.asarray(prompt_mask).astype(bool)
  if prompt_tokens.ndim != 2 or prompt_tokens.shape != prompt_mask.shape:
    raise ValueError(f"generate: prompt_tokens {prompt_tokens.shape} and "
                     f"prompt_mask {prompt_mask.shape} must both be [B, P]")
  vocab = model.cfg.vocab_size
  if eos_id is not None and eos_id >= vocab:
    raise ValueError(f"generate: eos_id={eos_id} is outside the vocab ({vocab})")
  try:
    rule = settings.make(num_samples=num_samples,
                         max_new_tokens=max_new_tokens,
                         platform=settings.platform_of(mesh), eos_id=eos_id,
                         pad_id=pad_id, attention=attention, cache=cache,
                         **sampling)
  except ValueError as e:
    raise ValueError(f"generate: {e}") from None
  b = prompt_tokens.shape[0]
  graphdef, state = nnx.split(model)
  keys = prompt_keys(rng, b)
  if jnp.issubdtype(keys.dtype, jax.dtypes.prng_key):
    keys = jax.random.key_data(keys)
  out = host.run(graphdef, state, np.asarray(prompt_tokens),
                 np.asarray(prompt_mask), np.asarray(keys), mesh=mesh,
                 settings=rule)
  return SampleOutput(*(jnp.asarray(x) for x in out[:4]))


def completion_logprobs(model: Transformer, prompt_tokens, prompt_mask,
                        completion_tokens, completion_mask,
                        temperature: float = 1.0):
  """Teacher-forced log-probs of completions (the full-forward reference).

  prompt_*: [B, P]; completion_*: [B, L]. Returns float32 [B, L] (0 where
  the completion mask is False).
  """
  tokens = jnp.concatenate([prompt_tokens, completion_tokens], 1)
  mask = jnp.concatenate([prompt_mask, completion_mask], 1).astype(bool)
  logp, _ = completion_logprobs_from_tokens(
      model, tokens, mask, prompt_tokens.shape[1],
      temperature=temperature or 1.0)
  return jnp.where(completion_mask, logp, 0.0)
