"""Per-response advantage baselines beside Poly-EPO (DESIGN 3.5).

Each is a pure function on one prompt's group, `fn(r_N, labels_N, valid_N,
**options) -> adv_N`, vmapped over prompts and jitted by `response_advantages`.
Invalid responses get 0; a prompt with fewer than 2 valid responses (fewer
than k for `passk`) gets 0 everywhere.

Names other frameworks use for the same estimators:

| here       | TRL (GRPOTrainer)              | verl (algorithm.adv_estimator)  |
|------------|--------------------------------|---------------------------------|
| `grpo`     | `scale_rewards="group"`        | `grpo` (norm_adv_by_std=True)   |
| `drgrpo`   | `scale_rewards="none"`         | `grpo`, norm_adv_by_std_in_grpo |
|            | (+ loss_type="dr_grpo")        | =False                          |
| `rloo`     | `RLOOTrainer`                  | `rloo`                          |
| `passk`    | -                              | - (Chen et al. 2025, no std)    |
| `grpo_div` | -                              | -                               |

`grpo`'s std uses `ddof` (1 = unbiased, as torch.std in TRL and verl; 0 =
population) and adds `eps` (verl 1e-6, TRL 1e-4) to the std.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

from poly_epo.set_rl.objectives import DEGENERATE, bind_options

_BASELINES: dict = {}


def register_baseline(name: str):
  def wrap(fn):
    _BASELINES[name] = fn
    return fn
  return wrap


def baseline_names() -> list[str]:
  return sorted(_BASELINES)


def _stats(r, v):
  v_f = v.astype(r.dtype)
  count = jnp.sum(v_f)
  mean = jnp.sum(r * v_f) / jnp.maximum(count, 1.0)
  return v_f, count, mean


@register_baseline("drgrpo")
def drgrpo(r, labels, v):
  """r_i - mean(r): Dr.GRPO (no std division)."""
  del labels
  _, _, mean = _stats(r, v)
  return r - mean


@register_baseline("grpo")
def grpo(r, labels, v, *, ddof: int = 1, eps: float = 1e-6):
  """(r_i - mean) / (std + eps). Zero-variance groups give exactly 0."""
  del labels
  v_f, count, mean = _stats(r, v)
  var = jnp.sum(v_f * (r - mean)**2) / jnp.maximum(count - ddof, 1.0)
  centred = r - mean
  return jnp.where(var > 0, centred / (jnp.sqrt(var) + eps), 0.0)


@register_baseline("rloo")
def rloo(r, labels, v):
  """r_i - mean of the other valid rewards = N/(N-1) (r_i - mean)."""
  del labels
  _, count, mean = _stats(r, v)
  return (r - mean) * count / jnp.maximum(count - 1.0, 1.0)


def cluster_bonus(labels, v):
  """(N / |cluster(i)| - 1) / (N - 1) over valid responses; 0 for DEGENERATE.

  N counts valid responses and |cluster(i)| the valid ones sharing i's label.
  """
  same = (labels[:, None] == labels[None, :]) & v[None, :]
  size = jnp.sum(same, axis=1).astype(jnp.float32)
  count = jnp.sum(v).astype(jnp.float32)
  bonus = (count / jnp.maximum(size, 1.0) - 1.0) / jnp.maximum(count - 1.0, 1.0)
  return jnp.where(labels == DEGENERATE, 0.0, bonus)


@register_baseline("grpo_div")
def grpo_div(r, labels, v, *, div_coef: float = 0.5):
  """Dr.GRPO on r_i + div_coef * cluster_bonus_i (the diversity-bonus baseline).

  The paper does not give its coefficient; 0.5 is this project's default.
  """
  shaped = r + div_coef * cluster_bonus(labels, v).astype(r.dtype)
  return drgrpo(shaped, labels, v)


def _comb_table(n: int) -> np.ndarray:
  """C(a, b) for 0 <= a, b <= n as float64 (0 where b > a)."""
  table = np.zeros((n + 2, n + 2))
  for a in range(n + 1):
    for b in range(a + 1):
      table[a, b] = math.comb(a, b)
  return table


@register_baseline("passk")
def passk(r, labels, v, *, k: int = 4, threshold: float = 0.5):
  """Closed-form pass@k advantages (Chen et al., 2025) without std division.

  A response is correct when its reward >= threshold. With c correct of N:
  rho = 1 - C(N-c, k)/C(N, k); correct -> 1 - rho; wrong -> 1 - rho -
  C(N-c-1, k-1)/C(N-1, k-1). Equals the `max` set objective under full
  enumeration (mean reduction) for binary rewards.
  """
  del labels
  table = jnp.asarray(_comb_table(r.shape[0]), r.dtype)

  def comb(a, b):
    a = jnp.clip(a, 0, r.shape[0] + 1)
    return jnp.where((b >= 0) & (b <= a), table[a, jnp.clip(b, 0)], 0.0)

  correct = v & (r >= threshold)
  n = jnp.sum(v).astype(jnp.int32)
  c = jnp.sum(correct).astype(jnp.int32)
  rho = 1.0 - comb(n - c, k) / jnp.maximum(comb(n, k), 1.0)
  wrong = 1.0 - rho - comb(n - c - 1, k - 1) / jnp.maximum(comb(n - 1, k - 1),
                                                         1.0)
  return jnp.where(correct, 1.0 - rho, wrong)


@functools.partial(jax.jit, static_argnames=("fn", "min_valid"))
def _response_advantages(rewards_BN, labels_BN, valid_BN, *, fn, min_valid):
  adv = jax.vmap(fn)(rewards_BN, labels_BN, valid_BN).astype(rewards_BN.dtype)
  enough = jnp.sum(valid_BN, axis=1, keepdims=True) >= min_valid
  return jnp.where(valid_BN & enough, adv, 0.0)


def response_advantages(name: str, rewards_BN, labels_BN, valid_BN,
                        **options):
  """Run the registered per-response baseline `name` over a [B, N] batch."""
  if name not in _BASELINES:
    raise ValueError(f"unknown baseline {name!r}; known: {baseline_names()}")
  min_valid = options.get("k", 2) if name == "passk" else 2
  fn = bind_options(_BASELINES[name], tuple(sorted(options.items())))
  return _response_advantages(rewards_BN, labels_BN, valid_BN, fn=fn,
                              min_valid=int(min_valid))
