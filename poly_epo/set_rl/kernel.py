"""The marginal set-advantage kernel (DESIGN 3.1), jitted and vmapped over prompts.

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

  def one_prompt(r_N, l_N, v_N):
    f_K = jax.vmap(objective)(r_N[subsets_Kn], l_N[subsets_Kn]).astype(dtype)
    w_K = jnp.all(v_N[subsets_Kn], axis=1)
    n_sets = jnp.sum(w_K)
    f_K = jnp.where(w_K, f_K, 0.0)
    baseline = jnp.sum(f_K) / jnp.maximum(n_sets, 1).astype(dtype)
    f_max = jnp.max(jnp.where(w_K, f_K, -jnp.inf))
    f_min = jnp.min(jnp.where(w_K, f_K, jnp.inf))
    adv_K = jnp.where(w_K & (f_max != f_min), f_K - baseline, 0.0)
    total_N = adv_K @ members_KN
    if reduce == "mean":
      count_N = w_K.astype(dtype) @ members_KN
      total_N = total_N / jnp.maximum(count_N, 1.0)
    enough = jnp.sum(v_N) >= set_size
    return jnp.where(v_N & enough, total_N, 0.0)

  return jax.vmap(one_prompt)(rewards_BN, labels_BN, valid_BN)


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
