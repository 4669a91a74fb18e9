"""A judge labels the N responses of one prompt by strategy, with the failure
rules of DESIGN 3.4:

- the call fails (error, timeout, unreadable reply) -> every response gets its
  own label (the set objective then reduces to mean reward), status "failed";
- the reply has the wrong number of labels -> the prompt is marked invalid
  (its advantages are 0), status "wrong_count".

Each case is counted in `judge.counts` for logging.
"""

from __future__ import annotations

import collections
import concurrent.futures
from typing import NamedTuple, Sequence

from poly_epo.judges.rubric import (JudgeCountError, JudgeFormatError,
                                    build_prompt, parse_labels)


class JudgeResult(NamedTuple):
  labels: list[int]
  valid: bool  # False -> the prompt's advantages must be 0.
  status: str  # "ok" | "failed" | "wrong_count"


class Judge:
  """Subclasses implement `complete(prompt_text) -> reply text` (may raise)."""

  max_concurrency = 1

  def __init__(self):
    self.counts: collections.Counter = collections.Counter()

  def complete(self, prompt_text: str) -> str:
    raise NotImplementedError

  def cluster(self, problem: str, responses: Sequence[str]) -> JudgeResult:
    n = len(responses)
    try:
      reply = self.complete(build_prompt(problem, responses))
      labels = parse_labels(reply, n)
    except JudgeCountError:
      self.counts["wrong_count"] += 1
      return JudgeResult(list(range(n)), False, "wrong_count")
    except (JudgeFormatError, Exception):  # noqa: BLE001 - the failure rule.
      self.counts["failed"] += 1
      return JudgeResult(list(range(n)), True, "failed")
    self.counts["ok"] += 1
    return JudgeResult(labels, True, "ok")

  def cluster_many(self, problems: Sequence[str],
                   responses: Sequence[Sequence[str]]) -> list[JudgeResult]:
    """One `cluster` per prompt, at most `max_concurrency` at a time."""
    if self.max_concurrency <= 1:
      return [self.cluster(p, r) for p, r in zip(problems, responses)]
    with concurrent.futures.ThreadPoolExecutor(self.max_concurrency) as pool:
      return list(pool.map(self.cluster, problems, responses))
