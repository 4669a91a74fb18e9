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

import jax.numpy as jnp

# The reserved strategy label for gibberish, guessing, code instead of maths,
# heavy repetition or an unparseable answer: never counts as a strategy.
DEGENERATE = -1

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
  return _bind(fn, tuple(sorted(options.items())))


@functools.lru_cache(maxsize=256)
def _bind(fn, options: tuple):
  return functools.partial(fn, **dict(options))


def distinct_labels(labels_n) -> jnp.ndarray:
  """Number of distinct non-DEGENERATE labels in one set (int32 scalar)."""
  n = labels_n.shape[0]
  same = labels_n[:, None] == labels_n[None, :]
  earlier = jnp.tril(jnp.ones((n, n), bool), k=-1)
  first = ~jnp.any(same & earlier, axis=1)
  return jnp.sum(first & (labels_n != DEGENERATE)).astype(jnp.int32)


@register_objective("mean")
def mean_reward(rewards_n, labels_n):
  """(1/n) sum r_i."""
  del labels_n
  return jnp.mean(rewards_n)


@register_objective("max")
def max_reward(rewards_n, labels_n):
  """max r_i: pass@n for binary rewards."""
  del labels_n
  return jnp.max(rewards_n)


@register_objective("polychromic")
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
