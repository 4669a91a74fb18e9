"""`math`: problems with reference answers from local JSONL or Parquet files.

Prompt (the paper's style): the problem, then "Please reason step by step, and
put your final answer within \\boxed{}." (a chat user turn when the tokenizer
has a template). The answer is taken as verl's maths reward takes it (the
last `\\boxed{...}`, else a final "answer: ..." line, from the response's
end); reward 1 iff it equals the reference after a strict normaliser or
under math-verify, checked in a pool of worker processes with a hard
deadline per answer (`workers`, `answer_timeout`). Labels come from the LM
judge (`label` returns None). Point the config at POLARIS-53k, AIME,
MATH-500, ... downloaded by you; `tests/data/math_sample.jsonl` is a tiny
sample.

Train / held-out: `heldout_path` when given, else a fixed hash split of the
problems (`heldout_fraction`), so the two never overlap.
"""

from __future__ import annotations

import hashlib
import json
import os

import numpy as np

from poly_epo.tasks.base import Task, register_task
from poly_epo.tasks.math_check import (answers_match, final_answer, last_boxed,
                                       math_verify, normalise)
from poly_epo.tasks.sandbox import AnswerPool

__all__ = ["MathTask", "answers_match", "last_boxed", "normalise",
           "load_records", "INSTRUCTION"]

INSTRUCTION = ("Please reason step by step, and put your final answer within "
               "\\boxed{}.")


def load_records(path: str, problem_field: str, answer_field: str
                 ) -> list[tuple[str, str]]:
  """(problem, answer) pairs; a bad line or row names the file and line."""
  if not os.path.exists(path):
    raise FileNotFoundError(f"math data file {path!r} does not exist")
  rows = []
  if path.endswith(".parquet"):
    try:
      import pyarrow.parquet as pq
    except ImportError:
      raise ImportError("reading Parquet needs pyarrow: pip install pyarrow") \
          from None
    records = pq.read_table(path).to_pylist()
    where = lambda i: f"{path} row {i}"
  else:
    records = []
    with open(path, encoding="utf-8") as f:
      for i, line in enumerate(f, 1):
        if not line.strip():
          continue
        try:
          records.append(json.loads(line))
        except json.JSONDecodeError as e:
          raise ValueError(f"{path}:{i}: not valid JSON ({e.msg})") from None
    where = lambda i: f"{path} record {i}"
  for i, rec in enumerate(records, 1):
    for field in (problem_field, answer_field):
      if not isinstance(rec, dict) or field not in rec:
        raise ValueError(f"{where(i)}: missing field {field!r}")
    rows.append((str(rec[problem_field]), str(rec[answer_field])))
  if not rows:
    raise ValueError(f"{path}: no records")
  return rows


@register_task("math")
class MathTask(Task):
  """Options: `path`, `heldout_path`, `problem_field`, `answer_field`,
  `heldout_fraction`, `chat_template` (auto | none)."""

  embedded = False
  max_response_chars = 16384

  def __init__(self, path: str, heldout_path: str | None = None,
               problem_field: str = "problem", answer_field: str = "answer",
               heldout_fraction: float = 0.1, chat_template: str = "auto",
               workers: int = 0, answer_timeout: float = 5.0):
    super().__init__()
    if math_verify is None:
      raise ImportError("the math task checks answers with math-verify: "
                        "pip install -e '.[math]'")
    self.pool = AnswerPool(workers or os.cpu_count() or 1, answer_timeout)
    if chat_template not in ("auto", "none"):
      raise ValueError(f"config.task.options.chat_template={chat_template!r}:"
                       " 'auto' (the tokenizer's template) or 'none'")
    self.chat_template = chat_template
    rows = load_records(path, problem_field, answer_field)
    if heldout_path:
      self.splits = {"train": rows,
                     "heldout": load_records(heldout_path, problem_field,
                                             answer_field)}
    else:
      def bucket(problem):
        h = hashlib.sha256(problem.encode()).digest()
        return int.from_bytes(h[:4], "big") / 2**32 < heldout_fraction
      self.splits = {"train": [r for r in rows if not bucket(r[0])],
                     "heldout": [r for r in rows if bucket(r[0])]}
    self.gold = {}
    for split_rows in self.splits.values():
      for problem, answer in split_rows:
        self.gold[self.format_prompt(problem)] = answer

  @staticmethod
  def format_prompt(problem: str) -> str:
    return f"{problem}\n{INSTRUCTION}"

  def _prompts(self, split, seed, count):
    rows = self.splits[split]
    if not rows:
      raise ValueError(f"math: the {split} split is empty")
    order = np.random.default_rng([seed, 0 if split == "train" else 1]
                                  ).permutation(len(rows))
    return [self.format_prompt(rows[order[i % len(rows)]][0])
            for i in range(count)]

  def _cut(self, response) -> str:
    """Long responses keep their end, where the final answer is."""
    if not isinstance(response, str):
      raise TypeError(f"response must be a string, got {type(response)}")
    return response[-self.max_response_chars:]

  def _answer(self, prompt, response):
    ans = final_answer(response)
    return None if ans is None else normalise(ans)

  def _reward(self, prompt, response):
    if prompt not in self.gold:
      raise KeyError("prompt not from this task")
    ans = final_answer(response)
    return float(ans is not None and answers_match(self.gold[prompt], ans))

  def rewards(self, prompts, rows):
    """Rewards [P, N] of a batch: answers extracted here, the equivalence
    checks that need math-verify run in the answer pool under a hard
    deadline each (a timeout scores 0 and counts in errors["timeout"])."""
    out = np.zeros((len(prompts), max((len(r) for r in rows), default=0)),
                   np.float32)
    jobs, where = [], []
    for i, (prompt, row) in enumerate(zip(prompts, rows)):
      gold = self.gold.get(prompt)
      for j, response in enumerate(row):
        try:
          ans = final_answer(self._cut(response))
        except Exception:  # noqa: BLE001 - counted, never raised.
          self.errors["reward"] += 1
          continue
        if gold is None:
          self.errors["reward"] += 1
        elif ans is None:
          continue
        elif normalise(gold) == normalise(ans):
          out[i, j] = 1.0
        else:
          jobs.append((gold, ans))
          where.append((i, j))
    before = (self.pool.timeouts, self.pool.errors)
    for (i, j), ok in zip(where, self.pool.map(answers_match, jobs, False)):
      out[i, j] = float(bool(ok))
    self.errors["timeout"] += self.pool.timeouts - before[0]
    self.errors["reward"] += self.pool.errors - before[1]
    return out
