"""Set objectives f(S): a score for one set of n responses (DESIGN 3.2).

An objective is a pure function `f(rewards_n, labels_n) -> scalar` on one set
(float [n] rewards, int [n] strategy labels). The kernel vmaps it over sets and
prompts. Add your own without editing the package:

    from poly_epo import set_rl

    @set_rl.register_objective("top2_mean")
    def top2_mean(rewards, labels):
      return jnp.sort(rewards)[-2:].mean()

or pass any such callable straight to `set_advantages(objective=...)`.
"""

from __future__ import annotations

import functools
from typing import Callable

import jax
import jax.numpy as jnp

from poly_epo.labels import DEGENERATE  # noqa: F401  (re-exported)

Objective = Callable[[jnp.ndarray, jnp.ndarray], jnp.ndarray]
_OBJECTIVES: dict[str, Objective] = {}


def register_objective(name: str):
  """Decorator: make `fn(rewards_n, labels_n) -> scalar` selectable by name."""
  def wrap(fn):
    if name in _OBJECTIVES and _OBJECTIVES[name] is not fn:
      raise ValueError(f"set objective {name!r} is already registered")
    _OBJECTIVES[name] = fn
    return fn
  return wrap


def objective_names() -> list[str]:
  return sorted(_OBJECTIVES)


def get_objective(objective: str | Objective, **options) -> Objective:
  """Resolve a name (with keyword options) or pass a callable through.

  The same (objective, options) always gives the same function object, so
  the jitted kernel compiles once per objective, not once per call.
  """
  if not callable(objective) and objective not in _OBJECTIVES:
    raise ValueError(f"unknown set objective {objective!r}; registered: "
                     f"{', '.join(objective_names())}")
  fn = objective if callable(objective) else _OBJECTIVES[objective]
  if not options:
    return fn
  return bind_options(fn, tuple(sorted(options.items())))


@functools.lru_cache(maxsize=256)
def bind_options(fn, options: tuple):
  """`fn` with keyword options bound, the same object for the same options
  (so jitted callers compile once); `fn` itself when there are none."""
  return functools.partial(fn, **dict(options)) if options else fn


def distinct_labels(labels_n) -> jnp.ndarray:
  """Number of distinct non-DEGENERATE labels in one set (int32 scalar)."""
  n = labels_n.shape[0]
  same = labels_n[:, None] == labels_n[None, :]
  earlier = jnp.tril(jnp.ones((n, n), bool), k=-1)
  first = ~jnp.any(same & earlier, axis=1)
  return jnp.sum(first & (labels_n != DEGENERATE)).astype(jnp.int32)


def with_batched_form(batched):
  """Attach a whole-batch form `batched(subsets_Kn, members_KN, rewards_BN,
  labels_BN, **options) -> f_BK` (every set of every prompt at once; members
  is the 0/1 [K, N] membership table) to an objective. An optional fast path:
  it must equal vmapping the per-set form (the tests compare them)."""
  def wrap(fn):
    fn.batched = batched
    return fn
  return wrap


def batched_form(fn):
  """The objective's whole-batch form with its options bound, or None."""
  inner = fn.func if isinstance(fn, functools.partial) else fn
  batched = getattr(inner, "batched", None)
  if batched is None:
    return None
  if isinstance(fn, functools.partial):
    return functools.partial(batched, **fn.keywords)
  return batched


def strategy_onehot(labels_BN, dtype):
  """[B, N, N]: response i's strategy class (the index of the first response
  with its label) as a one-hot row; all-zero rows for DEGENERATE."""
  n = labels_BN.shape[-1]
  same = labels_BN[..., :, None] == labels_BN[..., None, :]
  canon = jnp.argmax(same, axis=-1)  # First j with the same label.
  onehot = canon[..., None] == jnp.arange(n)
  return (onehot & (labels_BN != DEGENERATE)[..., None]).astype(dtype)


# Full f32 precision for the kernel's matmuls: on GPUs the default lets XLA
# use TF32 (10-bit mantissa), which moved advantages by ~4e-5 on an H100.
EXACT = jax.lax.Precision.HIGHEST


def _set_means(subsets_Kn, members_KN, rewards_BN):
  return jnp.einsum("kn,bn->bk", members_KN, rewards_BN,
                    precision=EXACT) / subsets_Kn.shape[1]


def _mean_batched(subsets_Kn, members_KN, rewards_BN, labels_BN):
  del labels_BN
  return _set_means(subsets_Kn, members_KN, rewards_BN)


def _max_batched(subsets_Kn, members_KN, rewards_BN, labels_BN):
  del members_KN, labels_BN
  return jnp.max(rewards_BN[:, subsets_Kn], axis=-1)


def distinct_per_set(subsets_Kn, members_KN, labels_BN):
  """Distinct non-DEGENERATE labels of every set of every prompt: int [B, K].

  Up to 32 responses: each response carries the bit of its strategy class;
  a set's distinct count is the popcount of its members' OR (no [B, K, N]
  intermediate). Beyond 32: counts per class by one matmul.
  """
  n = labels_BN.shape[-1]
  if n <= 32:
    same = labels_BN[..., :, None] == labels_BN[..., None, :]
    canon = jnp.argmax(same, axis=-1).astype(jnp.uint32)
    bits_BN = jnp.where(labels_BN != DEGENERATE,
                        jnp.left_shift(jnp.uint32(1), canon), jnp.uint32(0))
    union_BK = jax.lax.reduce(bits_BN[:, subsets_Kn], jnp.uint32(0),
                              jax.lax.bitwise_or, (2,))
    return jax.lax.population_count(union_BK).astype(jnp.int32)
  counts_BKN = jnp.einsum("kn,bnj->bkj", members_KN,
                          strategy_onehot(labels_BN, members_KN.dtype),
                          precision=EXACT)
  return jnp.sum(counts_BKN > 0, axis=-1).astype(jnp.int32)


def _polychromic_batched(subsets_Kn, members_KN, rewards_BN, labels_BN,
                         require_multiple_clusters: bool = False):
  distinct_BK = distinct_per_set(subsets_Kn, members_KN, labels_BN)
  diversity = distinct_BK.astype(rewards_BN.dtype) / subsets_Kn.shape[1]
  if require_multiple_clusters:
    diversity = jnp.where(distinct_BK >= 2, diversity, 0.0)
  return _set_means(subsets_Kn, members_KN, rewards_BN) * diversity


@register_objective("mean")
@with_batched_form(_mean_batched)
def mean_reward(rewards_n, labels_n):
  """(1/n) sum r_i."""
  del labels_n
  return jnp.mean(rewards_n)


@register_objective("max")
@with_batched_form(_max_batched)
def max_reward(rewards_n, labels_n):
  """max r_i: pass@n for binary rewards."""
  del labels_n
  return jnp.max(rewards_n)


@register_objective("polychromic")
@with_batched_form(_polychromic_batched)
def polychromic(rewards_n, labels_n, require_multiple_clusters: bool = False):
  """Poly-EPO: mean reward x (distinct non-DEGENERATE labels / n).

  With `require_multiple_clusters`, a set with fewer than two distinct
  non-DEGENERATE labels scores 0 (a variant; off by default).
  """
  n = rewards_n.shape[0]
  distinct = distinct_labels(labels_n)
  diversity = distinct.astype(rewards_n.dtype) / n
  if require_multiple_clusters:
    diversity = jnp.where(distinct >= 2, diversity, 0.0)
  return jnp.mean(rewards_n) * diversity
