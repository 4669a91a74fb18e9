"""Nothing silent while training: a run whose advantages are all zero for
several steps running says so on the console, with the likely cause."""

from __future__ import annotations

import math

import numpy as np

from poly_epo import set_rl
from poly_epo.labels import DEGENERATE


def zero_cause(cfg, rewards_BN, labels_BN, unparsed: int) -> str:
  """The likeliest reason every advantage of a step is 0."""
  if cfg.algorithm not in set_rl.baseline_names() and \
      (cfg.num_sets == 1 or math.comb(cfg.num_samples, cfg.set_size) == 1):
    return ("one set per prompt (config.num_sets / set_size): every set "
            "advantage f(S) - mean f is 0")
  if np.all(rewards_BN == rewards_BN[:, :1]):
    values = ", ".join(f"{v:g}" for v in np.unique(rewards_BN)[:4])
    hint = (f"; {unparsed} responses had no readable final answer"
            if unparsed else "")
    return (f"rewards are equal within every prompt ({values}): too hard or "
            f"too easy for the policy, or the reward never pays{hint}")
  if cfg.algorithm in set_rl.NEEDS_LABELS and \
      np.all(labels_BN == DEGENERATE):
    return ("no strategy labels: every response is DEGENERATE (a task "
            "without labels and no judge, or answers that never parse: "
            f"{unparsed} unparsed this step)")
  return "rewards or labels give no set a different score"


class ZeroAdvantageWatch:
  """Counts steps in a row whose advantages are all 0; at `patience` such
  steps returns one console line (then again only after a step with a
  signal, so a long streak is reported once)."""

  def __init__(self, cfg, patience: int = 3):
    self.cfg, self.patience, self.run = cfg, patience, 0

  def step(self, step: int, adv_BN, rewards_BN, labels_BN,
           unparsed: int = 0) -> str | None:
    if np.any(np.asarray(adv_BN) != 0):
      self.run = 0
      return None
    self.run += 1
    if self.run != self.patience:
      return None
    return (f"warning: every advantage has been 0 for {self.run} steps in a "
            f"row (steps {step - self.run + 1}-{step}), so nothing is "
            "learned; likely cause: " + zero_cause(
                self.cfg, np.asarray(rewards_BN), np.asarray(labels_BN),
                unparsed))
