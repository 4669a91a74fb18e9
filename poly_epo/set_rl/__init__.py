"""Set RL: set objectives, the marginal set-advantage kernel, and baselines.

`advantages(name, rewards, labels, ...)` is the one entry point the trainer
uses; `name` is an algorithm:

- `polyepo`: Poly-EPO, the `polychromic` set objective (DESIGN 3.2);
- any set-objective name (`mean`, `max`, `polychromic`, or one you
  registered with `register_objective`): marginal set advantages;
- a per-response baseline: `grpo`, `drgrpo`, `rloo`, `grpo_div`, `passk`.
"""

from __future__ import annotations

from poly_epo.set_rl.baselines import (baseline_names, cluster_bonus,
                                       register_baseline, response_advantages)
from poly_epo.set_rl.kernel import (broadcast_valid, check_inputs,
                                    marginal_advantages, set_advantages)
from poly_epo.set_rl.objectives import (DEGENERATE, distinct_labels,
                                        get_objective, objective_names,
                                        register_objective)
from poly_epo.set_rl.subsets import all_subsets, sampled_subsets, subset_table

ALGORITHM_OBJECTIVES = {"polyepo": "polychromic"}
# Algorithms whose advantages read strategy labels (all DEGENERATE labels
# make polychromic's every set score 0).
NEEDS_LABELS = ("polyepo", "polychromic", "grpo_div")


def algorithm_names() -> list[str]:
  return sorted(set(ALGORITHM_OBJECTIVES) | set(objective_names())
                | set(baseline_names()))


def advantages(name: str, rewards, labels, *, set_size: int = 4,
               num_sets: int | None = None, reduce: str = "mean", valid=None,
               rng=None, **options):
  """Advantages [B, N] of algorithm `name` (see the module docstring).

  Set objectives take `set_size`, `num_sets`, `reduce`, `rng` and objective
  options; baselines take their own options (`ddof`, `eps`, `div_coef`); for
  `passk`, k = `set_size`.
  """
  if name in baseline_names():
    rewards, labels = check_inputs(rewards, labels)
    if name == "passk":
      options.setdefault("k", set_size)
    return response_advantages(name, rewards, labels,
                               broadcast_valid(valid, rewards),
                               **options)
  objective = ALGORITHM_OBJECTIVES.get(name, name)
  if objective not in objective_names():
    raise ValueError(f"unknown algorithm {name!r}; known: "
                     f"{', '.join(algorithm_names())}")
  return set_advantages(rewards, labels, objective=objective,
                        set_size=set_size, num_sets=num_sets, reduce=reduce,
                        valid=valid, rng=rng, **options)


__all__ = [
    "DEGENERATE", "advantages", "algorithm_names", "all_subsets",
    "baseline_names", "broadcast_valid", "cluster_bonus", "distinct_labels",
    "get_objective", "marginal_advantages", "objective_names",
    "register_baseline", "register_objective", "response_advantages",
    "sampled_subsets", "set_advantages", "subset_table",
]
