"""Rewards and labels of a step's completions, scored while the rest decode.

The rollout engine calls `StepScorer.submit(prompt_indices, tokens, mask)`
as soon as every sample of those prompts has ended; the scorer decodes the
texts, runs the task's checker and the judge on host threads and keeps the
results per prompt. `result(out)` waits, scores whatever was never submitted
(so passing no callback at all scores everything after the rollout) and
returns the arrays in prompt order: the same rewards and labels as scoring
after the rollout, since every prompt is scored on its own
(tests/test_scoring.py).
"""

from __future__ import annotations

import concurrent.futures
import threading

import numpy as np

from poly_epo import evaluation
from poly_epo.tokenizer import decode_completions

_STATUSES = ("ok", "failed", "wrong_count")


class StepScorer:
  """Scores one step's prompts (this process's block) as they finish.

  Args:
    task, tok: the task (rewards, labels) and the tokenizer.
    judge: the step's judge, or None (the task's labels).
    prompts: this process's prompts, in rollout order.
    workers: host threads scoring finished prompts.
  """

  def __init__(self, task, tok, judge, prompts, workers: int = 2):
    self.task, self.tok, self.judge = task, tok, judge
    self.prompts = list(prompts)
    self._pool = concurrent.futures.ThreadPoolExecutor(
        workers, thread_name_prefix="score")
    self._futures = []
    self._lock = threading.Lock()
    self._seen = np.zeros(len(self.prompts), bool)

  def submit(self, idx, tokens, mask) -> None:
    """Score prompts `idx` (their tokens / mask [n, k, L]) in the
    background; the engine's `on_done` callback."""
    idx = np.asarray(idx)
    with self._lock:
      self._seen[idx] = True
    self._futures.append(self._pool.submit(self._score, idx, tokens, mask))

  def _score(self, idx, tokens, mask):
    prompts = [self.prompts[i] for i in idx]
    texts = decode_completions(self.tok, tokens, mask)
    rewards, labels = evaluation.score(self.task, prompts, texts)
    valid = np.ones(len(idx), bool)
    statuses = np.zeros(3)
    if self.judge is not None:
      results = self.judge.cluster_many(prompts, texts)
      labels = np.array([r.labels for r in results], np.int32)
      valid = np.array([r.valid for r in results])
      statuses = np.array([sum(r.status == s for r in results)
                           for s in _STATUSES], float)
    return idx, np.asarray(rewards, np.float32), labels, valid, statuses

  def result(self, out):
    """(rewards [B, N], labels [B, N], valid [B], judge outcome counts
    [ok, failed, wrong_count]) of every prompt; `out` is the rollout's
    SampleOutput (prompts never submitted are scored from it now)."""
    rest = np.flatnonzero(~self._seen)
    if rest.size:
      self.submit(rest, np.asarray(out.tokens)[rest],
                  np.asarray(out.mask)[rest])
    try:
      parts = [f.result() for f in self._futures]
    finally:
      self._pool.shutdown(wait=True)
    b = len(self.prompts)
    k = np.asarray(out.tokens).shape[1]
    rewards = np.zeros((b, k), np.float32)
    labels = np.zeros((b, k), np.int32)
    valid = np.zeros(b, bool)
    statuses = np.zeros(3)
    for idx, r, lab, v, s in parts:
      rewards[idx], labels[idx], valid[idx] = r, lab, v
      statuses += s
    return rewards, labels, valid, statuses
