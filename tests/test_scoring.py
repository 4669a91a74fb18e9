"""poly_epo.scoring: prompts scored as they finish, in any grouping and
order, give exactly the rewards, labels and judge outcomes of scoring the
whole batch after the rollout."""

import threading

import numpy as np

from poly_epo import evaluation, tasks
from poly_epo.judges.base import JudgeResult
from poly_epo.scoring import StepScorer
from poly_epo.tokenizer import char_tokenizer, decode_completions


class _Judge:
  """Labels from the text lengths; one prompt in five fails."""

  def __init__(self):
    self.lock = threading.Lock()
    self.calls = 0

  def cluster_many(self, problems, responses):
    with self.lock:
      self.calls += 1
    return [JudgeResult([len(r) % 3 for r in row], hash(p) % 5 != 0,
                        "ok" if hash(p) % 5 else "failed")
            for p, row in zip(problems, responses)]


def _answers(task, prompt):
  """Correct "(x,y)" answers of a polynomial prompt, by brute force."""
  _, holds, lo, hi = task.parse_prompt(prompt)
  return [f"({x},{y})" for x in range(lo, hi + 1) for y in range(-99, 100)
          if holds(x, y)]


def _batch(b=12, k=4, length=12, seed=0):
  task = tasks.get("polynomial")
  tok = char_tokenizer()
  prompts = task.train_batch(seed, 0, b)
  rs = np.random.RandomState(seed)
  tokens = np.zeros((b, k, length), np.int64)
  mask = np.zeros((b, k, length), bool)
  for i, p in enumerate(prompts):
    good = _answers(task, p)
    for j in range(k):  # Correct answers (several strategies), or noise.
      text = good[rs.randint(len(good))] if good and rs.rand() < 0.6 else \
          f"({rs.randint(-9, 9)},{rs.randint(-9, 9)})"
      ids = tok.encode(text, add_special_tokens=False)[:length]
      tokens[i, j, :len(ids)] = ids
      mask[i, j, :len(ids)] = True
  return task, tok, prompts, tokens, mask


class _Out:
  def __init__(self, tokens, mask):
    self.tokens, self.mask = tokens, mask


def test_scored_while_decoding_equals_scored_after():
  task, tok, prompts, tokens, mask = _batch()
  for judge in (None, _Judge()):
    after = StepScorer(task, tok, judge, prompts).result(_Out(tokens, mask))
    scorer = StepScorer(task, tok, judge, prompts)
    for group in ([7, 2], [0], [11, 3, 5], [9]):  # Out of order, partial.
      scorer.submit(np.array(group), tokens[group], mask[group])
    during = scorer.result(_Out(tokens, mask))
    for a, b in zip(after, during):
      np.testing.assert_array_equal(a, b)
  # And both equal the task's own scoring of the whole batch.
  texts = decode_completions(tok, tokens, mask)
  rewards, labels = evaluation.score(task, prompts, texts)
  np.testing.assert_array_equal(after[0], rewards)
  assert 0.2 < rewards.mean() < 0.9  # Both correct and wrong answers.
  np.testing.assert_array_equal(StepScorer(task, tok, None, prompts).result(
      _Out(tokens, mask))[1], labels)
