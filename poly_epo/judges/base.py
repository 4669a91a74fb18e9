"""A judge labels the N responses of one prompt by strategy, with the failure
rules of DESIGN 3.4:

- the call fails (error, timeout, unreadable reply) -> every response gets its
  own label (the set objective then reduces to mean reward), status "failed";
- the reply has the wrong number of labels -> the prompt is marked invalid
  (its advantages are 0), status "wrong_count".

Each case is counted in `judge.counts` for logging, and the first reason of
each kind (the exception, or the reply that did not parse) is kept until
`take_reasons()` (the trainer prints and logs them every step);
`cluster_many` returns the statuses so the trainer can log per-step
fractions and stop a run whose judge keeps failing
(config.judge.max_failed_fraction).
"""

from __future__ import annotations

import collections
import concurrent.futures
from typing import NamedTuple, Sequence

from poly_epo.judges.rubric import (JudgeCountError, JudgeFormatError,
                                    build_prompt, head_and_tail, parse_labels)


class JudgeResult(NamedTuple):
  labels: list[int]
  valid: bool  # False -> the prompt's advantages must be 0.
  status: str  # "ok" | "failed" | "wrong_count"


# Characters per token assumed when a judge has no tokenizer at hand (HTTP):
# maths text with LaTeX runs at about 3.5-4.
CHARS_PER_TOKEN = 4


class Judge:
  """Subclasses implement `complete(prompt_text) -> reply text` (may raise).

  Each response is shown whole up to `max_response_tokens`; a longer one is
  cut in the middle, keeping its head and its tail (`prepare`).
  """

  max_concurrency = 1

  def __init__(self, max_response_tokens: int = 4096):
    self.counts: collections.Counter = collections.Counter()
    self.reasons: dict[str, str] = {}  # Kind -> first reason since taken.
    self.max_response_tokens = max_response_tokens

  def _fail(self, kind: str, reason: str) -> None:
    self.counts[kind] += 1
    self.reasons.setdefault(kind, " ".join(reason.split())[:300])

  def take_reasons(self) -> dict[str, str]:
    """The first reason of each failure kind since the last call."""
    reasons, self.reasons = self.reasons, {}
    return reasons

  def complete(self, prompt_text: str) -> str:
    raise NotImplementedError

  def flush(self, name: str) -> None:
    """Persist judgements made since the last flush (collective on several
    processes; a no-op for judges without a cache)."""

  def prepare(self, response: str) -> str:
    """The response as the judge sees it (cut to the budget)."""
    return head_and_tail(response, self.max_response_tokens * CHARS_PER_TOKEN)

  def cluster(self, problem: str, responses: Sequence[str]) -> JudgeResult:
    n = len(responses)
    reply = None
    try:
      reply = self.complete(build_prompt(
          problem, [self.prepare(r) for r in responses]))
      labels = parse_labels(reply, n)
    except JudgeCountError as e:
      self._fail("wrong_count", f"{e}; reply: {reply!r}")
      return JudgeResult(list(range(n)), False, "wrong_count")
    except (JudgeFormatError, Exception) as e:  # noqa: BLE001 - the rule.
      why = f"{type(e).__name__}: {e}"
      self._fail("failed", why if reply is None else f"{why}; reply: "
                 f"{reply!r}")
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
