"""Rollouts for the engine's tests: keyword settings (`engine.settings.make`
names) split from `rollout.rollout`'s own arguments."""

import jax
import numpy as np

from poly_epo import rollout
from poly_epo.engine import settings

_ROLLOUT_ARGS = ("stats", "on_done", "compute_dtype", "progress",
                 "stop_check")


def run_rollout(policy, tokens, mask, *, mesh=None, seed=7, **kw):
  """`rollout.rollout` of the split `policy` on prompts [B, P] with the
  settings in `kw` (the mesh's platform)."""
  graphdef, params, rest = policy
  args = {k: kw.pop(k) for k in list(kw) if k in _ROLLOUT_ARGS}
  s = settings.make(platform=settings.platform_of(mesh), **kw)
  return rollout.rollout(graphdef, params, rest, tokens, mask,
                         np.arange(len(tokens)), rng=jax.random.key(seed),
                         settings=s, mesh=mesh, **args)
