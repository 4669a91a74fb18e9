"""The configured judge of a run (`config.judge`), checked at start-up, and
the rule that stops a run whose judge keeps failing."""

from __future__ import annotations

import jax
import numpy as np

from poly_epo import sharding, storage
from poly_epo.judges.http import HttpJudge
from poly_epo.judges.inprocess import InProcessJudge


def make_judge(cfg):
  """The configured LM judge, checked at start-up (endpoint answers, or the
  in-process model's context holds N responses), or None (task labels).

  On several processes the HTTP judge's `max_concurrency` is the run's, split
  over the processes, and its cache is the run's shared
  `<workdir>/judge_cache/`; the in-process judge lives on this host's
  devices in the compute dtype."""
  j = cfg.judge
  if j.kind == "http":
    per_process = -(-j.max_concurrency // jax.process_count())
    judge = HttpJudge(j.url, j.model, timeout=j.timeout,
                      max_concurrency=max(per_process, 1),
                      max_tokens=j.max_reply_tokens,
                      max_response_tokens=j.max_response_tokens,
                      cache_dir=storage.join(cfg.workdir, "judge_cache"))
    judge.health_check()
    return judge
  if j.kind == "inprocess":
    local = jax.local_devices()
    judge = InProcessJudge(
        j.path, max_new_tokens=j.max_reply_tokens,
        max_response_tokens=j.max_response_tokens, dtype=cfg.model.dtype,
        mesh=sharding.make_mesh(1, len(local), 1, devices=local))
    judge.check_budget(cfg.num_samples)
    return judge
  return None


class JudgeWatch:
  """Per-step judge outcome fractions, and the stop rule: more than
  `max_failed_fraction` of the calls failed over the last `window` steps."""

  def __init__(self, max_failed_fraction: float, window: int):
    self.limit, self.window = max_failed_fraction, window
    self.recent: list[float] = []

  def step(self, statuses_counts: np.ndarray, step: int) -> dict:
    """statuses_counts: [ok, failed, wrong_count] summed over processes."""
    total = max(float(statuses_counts.sum()), 1.0)
    row = {"judge/failed_fraction": float(statuses_counts[1] / total),
           "judge/wrong_count_fraction": float(statuses_counts[2] / total)}
    self.recent = (self.recent + [row["judge/failed_fraction"]])[
        -self.window:]
    return row

  def check(self, step: int) -> None:
    """Raise when the judge failed too often over the window."""
    if len(self.recent) == self.window and \
        float(np.mean(self.recent)) > self.limit:
      raise RuntimeError(
          f"the strategy judge failed on {np.mean(self.recent):.0%} of its "
          f"calls over the last {self.window} steps (step {step}; "
          f"config.judge.max_failed_fraction={self.limit}): stopping rather "
          "than silently training on mean reward. Fix the judge (endpoint "
          "up? model name? replies parse?) and start the same command again: "
          "the run resumes from its last checkpoint.")
