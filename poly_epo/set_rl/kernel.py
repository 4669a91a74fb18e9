"""The marginal set-advantage kernel (DESIGN 3.1), jitted, batched over prompts.

For each prompt: score every set S in the subset table with the objective f,
baseline b = mean f over the sets, A(S) = f(S) - b, and give response i the
mean (or sum) of A(S) over the sets that contain i. No std division.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from poly_epo.set_rl import objectives as obj_lib
from poly_epo.set_rl.subsets import subset_table

REDUCTIONS = ("mean", "sum")


def _place_like(x, ref):
  """Put `x` on `ref`'s sharding (so vmapped inputs agree under a mesh)."""
  sharding = getattr(ref, "sharding", None)
  if isinstance(sharding, jax.sharding.NamedSharding):
    return jax.device_put(x, sharding)
  return x


def broadcast_valid(valid, rewards_BN) -> jnp.ndarray:
  """None -> all True; [B] per prompt -> [B, N]; [B, N] as is (bool)."""
  shape = rewards_BN.shape
  if valid is None:
    return _place_like(np.ones(shape, bool), rewards_BN)
  valid = np.asarray(valid).astype(bool)
  if valid.shape == shape[:1]:
    valid = np.broadcast_to(valid[:, None], shape)
  if valid.shape != shape:
    raise ValueError(f"valid has shape {valid.shape}; expected [B]={shape[:1]}"
                     f" or [B, N]={shape}")
  return _place_like(valid, rewards_BN)


def check_inputs(rewards, labels):
  """Validate [B, N] rewards (float) and labels (int32)."""
  rewards = jnp.asarray(rewards)
  if not jnp.issubdtype(rewards.dtype, jnp.floating):
    rewards = rewards.astype(jnp.float32)
  labels = jnp.asarray(labels)
  if rewards.ndim != 2 or labels.shape != rewards.shape:
    raise ValueError(f"rewards {rewards.shape} and labels {labels.shape} must "
                     "both be [B, N]")
  if not jnp.issubdtype(labels.dtype, jnp.integer):
    raise ValueError(f"labels must be integers, got {labels.dtype}")
  return rewards, _place_like(labels.astype(jnp.int32), rewards)


@functools.partial(jax.jit, static_argnames=("objective", "reduce"))
def marginal_advantages(rewards_BN, labels_BN, valid_BN, subsets_Kn, *,
                        objective, reduce: str = "mean"):
  """The jitted core: float [B, N] advantages for a fixed subset table.

  A set counts only if all its members are valid; the baseline is the mean
  over counted sets; invalid responses, and prompts with fewer than n valid
  responses, get exactly 0. If every counted set scores the same, every
  advantage is exactly 0.
  """
  n_resp = rewards_BN.shape[1]
  set_size = subsets_Kn.shape[1]
  dtype = rewards_BN.dtype
  members_KN = jnp.sum(jax.nn.one_hot(subsets_Kn, n_resp, dtype=dtype), 1)
  batched = obj_lib.batched_form(objective)
  if batched is not None:  # Whole-batch matmul form of a built-in objective.
    f_BK = batched(subsets_Kn, members_KN, rewards_BN, labels_BN).astype(dtype)
  else:  # Any per-set callable, vmapped over sets and prompts.
    per_prompt = jax.vmap(objective)
    f_BK = jax.vmap(lambda r, l: per_prompt(r[subsets_Kn], l[subsets_Kn]))(
        rewards_BN, labels_BN).astype(dtype)
  # A set counts only if none of its members is invalid.
  invalid_BN = (~valid_BN).astype(dtype)
  w_BK = jnp.einsum("kn,bn->bk", members_KN, invalid_BN,
                    precision=obj_lib.EXACT) == 0
  n_sets_B1 = jnp.sum(w_BK, axis=1, keepdims=True).astype(dtype)
  f_BK = jnp.where(w_BK, f_BK, 0.0)
  baseline_B1 = jnp.sum(f_BK, 1, keepdims=True) / jnp.maximum(n_sets_B1, 1.0)
  f_max = jnp.max(jnp.where(w_BK, f_BK, -jnp.inf), axis=1, keepdims=True)
  f_min = jnp.min(jnp.where(w_BK, f_BK, jnp.inf), axis=1, keepdims=True)
  adv_BK = jnp.where(w_BK & (f_max != f_min), f_BK - baseline_B1, 0.0)
  total_BN = jnp.matmul(adv_BK, members_KN, precision=obj_lib.EXACT)
  if reduce == "mean":
    count_BN = jnp.matmul(w_BK.astype(dtype), members_KN,
                          precision=obj_lib.EXACT)
    total_BN = total_BN / jnp.maximum(count_BN, 1.0)
  enough_B1 = jnp.sum(valid_BN, axis=1, keepdims=True) >= set_size
  return jnp.where(valid_BN & enough_B1, total_BN, 0.0)


def set_advantages(rewards, labels, *, objective="polychromic",
                   set_size: int = 4, num_sets: int | None = None,
                   reduce: str = "mean", valid=None, rng=None,
                   **objective_options) -> jnp.ndarray:
  """Marginal set advantages of every response.

  Args:
    rewards: float [B, N] rewards in [0, 1].
    labels: int [B, N] strategy labels (`DEGENERATE` for degenerate ones).
    objective: a registered set-objective name ("mean", "max",
      "polychromic", ...) or a callable `f(rewards_n, labels_n) -> scalar`.
    set_size: n, the size of each set.
    num_sets: K sets drawn uniformly without replacement (requires `rng`);
      None (default) enumerates all C(N, n).
    reduce: "mean" (default; the authors' implementation) or "sum" (the
      paper's theory; C(N-1, n-1) times larger under full enumeration).
    valid: bool [B, N] per response or [B] per prompt (e.g. False when the
      judge returned the wrong number of labels). Invalid -> advantage 0.
    rng: a JAX key choosing the sampled sets (used only with `num_sets`).
    **objective_options: keyword options of the objective, e.g.
      `require_multiple_clusters=True` for "polychromic".

  Returns:
    float [B, N] advantages (float32 for float32 rewards).
  """
  rewards, labels = check_inputs(rewards, labels)
  if reduce not in REDUCTIONS:
    raise ValueError(f"reduce={reduce!r}; expected one of {REDUCTIONS}")
  n_resp = rewards.shape[1]
  seed = 0
  if num_sets is not None:
    if num_sets < 1:
      raise ValueError(f"num_sets={num_sets} must be >= 1 (or None for all)")
    if rng is None:
      raise ValueError("num_sets is set, so an rng key is needed to draw the "
                       "sets")
    seed = int(jax.random.randint(rng, (), 0, np.iinfo(np.int32).max))
  table = subset_table(n_resp, set_size, num_sets, seed)
  fn = obj_lib.get_objective(objective, **objective_options)
  return marginal_advantages(rewards, labels,
                             broadcast_valid(valid, rewards),
                             jnp.asarray(table), objective=fn, reduce=reduce)
