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

import collections
import hashlib
import os

import numpy as np

from poly_epo.tasks.base import Task, labels_by_answer, register_task
from poly_epo.tasks.math_data import (check_conflicts, load_records,
                                      normalise_problem)
from poly_epo.tasks.math_check import (answers_match, final_answer, last_boxed,
                                       math_verify, normalise)
from poly_epo.tasks.sandbox import AnswerPool

__all__ = ["MathTask", "answers_match", "last_boxed", "normalise",
           "load_records", "INSTRUCTION"]

INSTRUCTION = ("Please reason step by step, and put your final answer within "
               "\\boxed{}.")


@register_task("math")
class MathTask(Task):
  """Options: `path`, `heldout_path`, `problem_field`, `answer_field`,
  `heldout_fraction`, `chat_template` (auto | none), `workers` and
  `answer_timeout` (the answer pool), `eval_sets` ({name: path}: held-out
  sets evaluated separately, e.g. the authors' MATH-500, AIME25,
  BeyondAIME, Minerva), `bad_rows` (error | drop: invalid rows refused, or
  skipped and counted in `self.dropped`), `labels` (judge: an LM judge
  labels strategies; answer: the normalised final answer is the label, the
  paper's rule for polynomial solving, usable without a judge). Files: flat
  JSONL / Parquet or verl's format."""

  embedded = False
  max_response_chars = 16384

  def __init__(self, path: str, heldout_path: str | None = None,
               problem_field: str = "problem", answer_field: str = "answer",
               heldout_fraction: float = 0.1, chat_template: str = "auto",
               workers: int = 0, answer_timeout: float = 5.0,
               eval_sets=None, bad_rows: str = "error",
               labels: str = "judge"):
    super().__init__()
    if labels not in ("judge", "answer"):
      raise ValueError(f"config.task.options.labels={labels!r}: 'judge' "
                       "(an LM judge labels strategies) or 'answer' (the "
                       "canonical final answer is the label)")
    self.labels = labels
    if math_verify is None:
      raise ImportError("the math task checks answers with math-verify: "
                        "pip install -e '.[math]'")
    if chat_template not in ("auto", "none"):
      raise ValueError(f"config.task.options.chat_template={chat_template!r}:"
                       " 'auto' (the tokenizer's template) or 'none'")
    self.chat_template = chat_template
    self.dropped = collections.Counter()  # Bad rows skipped, per reason.
    load = lambda p: load_records(p, problem_field, answer_field, bad_rows,
                                  self.dropped)
    rows = load(path)
    if heldout_path:
      self.splits = {"train": rows, "heldout": load(heldout_path)}
    else:
      def bucket(problem):
        h = hashlib.sha256(problem.encode()).digest()
        return int.from_bytes(h[:4], "big") / 2**32 < heldout_fraction
      self.splits = {"train": [r for r in rows if not bucket(r.problem)],
                     "heldout": [r for r in rows if bucket(r.problem)]}
    self.named_sets = {}
    for name, set_path in dict(eval_sets or {}).items():
      if set_path:
        self.named_sets[name] = load(set_path)
    check_conflicts({"train": rows, **self.splits, **self.named_sets})
    # References keyed by the normalised problem (never by formatted text:
    # two spellings of one problem share one reference).
    self.gold = {}
    for split_rows in [*self.splits.values(), *self.named_sets.values()]:
      for r in split_rows:
        self.gold[self._key(r.problem)] = r.answer
    if self.dropped:
      print("math data: dropped rows (config.task.options.bad_rows=drop): "
            + ", ".join(f"{why}: {n}" for why, n in
                        sorted(self.dropped.items())))
    self.pool = AnswerPool(workers or os.cpu_count() or 1, answer_timeout)

  @staticmethod
  def format_prompt(problem: str) -> str:
    """The authors' user turn: the problem, then the instruction (once: verl
    files often carry it already)."""
    problem = problem.rstrip()
    return problem if problem.endswith(INSTRUCTION) else \
        f"{problem}\n{INSTRUCTION}"

  def _prompts(self, split, seed, count):
    rows = self.splits[split]
    if not rows:
      raise ValueError(f"math: the {split} split is empty")
    order = np.random.default_rng([seed, 0 if split == "train" else 1]
                                  ).permutation(len(rows))
    return [self.format_prompt(rows[order[i % len(rows)]].problem)
            for i in range(count)]

  def train_batch(self, seed: int, step: int, count: int) -> list[str]:
    """Step `step`'s prompts: seeded epochs over the training problems, each
    a fresh permutation, so no problem repeats within an epoch and a resumed
    run draws the same batches."""
    rows = self.splits["train"]
    if not rows:
      raise ValueError("math: the train split is empty")
    n = len(rows)
    out = []
    for k in range(step * count, (step + 1) * count):
      epoch, pos = divmod(k, n)
      order = np.random.default_rng([seed, 2, epoch]).permutation(n)
      out.append(self.format_prompt(rows[order[pos]].problem))
    return out

  def eval_sets(self, seed: int, count: int) -> dict[str, list[str]]:
    """{name: prompts} of the named held-out sets (every problem, or the
    first `count` of a seeded order when count > 0); the held-out split when
    none is configured."""
    if not self.named_sets:
      return super().eval_sets(seed, count)
    out = {}
    for name, rows in self.named_sets.items():
      order = np.random.default_rng([seed, 3]).permutation(len(rows))
      take = order[:count] if count else order
      out[name] = [self.format_prompt(rows[i].problem) for i in take]
    return out

  def filter_prompts(self, keep) -> dict[str, int]:
    """Drop problems whose prompt fails `keep(prompt)` (e.g. longer than
    config.max_prompt_tokens, as verl filters at load); returns the number
    dropped per split / set."""
    dropped = {}
    for d in (self.splits, self.named_sets):
      for name, rows in d.items():
        kept = [r for r in rows if keep(self.format_prompt(r.problem))]
        dropped[name] = len(rows) - len(kept)
        d[name] = kept
    return dropped

  @staticmethod
  def _key(text: str) -> str:
    """A problem's (or its prompt's) key: without the instruction, with
    whitespace collapsed."""
    text = text.rstrip()
    if text.endswith(INSTRUCTION):
      text = text[:-len(INSTRUCTION)]
    return normalise_problem(text)

  def gold_answer(self, prompt: str) -> str | None:
    """The reference answer of a prompt made by `format_prompt`."""
    return self.gold.get(self._key(prompt))

  def _cut(self, response) -> str:
    """Long responses keep their end, where the final answer is."""
    if not isinstance(response, str):
      raise TypeError(f"response must be a string, got {type(response)}")
    return response[-self.max_response_chars:]

  def _answer(self, prompt, response):
    ans = final_answer(response)
    return None if ans is None else normalise(ans)

  def gives_labels(self) -> bool:
    return self.labels == "answer"

  def _label(self, prompt, responses):
    if self.labels == "judge":
      return None  # The LM judge labels.
    return labels_by_answer(self.group_answers(
        prompt, [self._answer(prompt, r) for r in responses]))

  def _reward(self, prompt, response):
    gold = self.gold_answer(prompt)
    if gold is None:
      raise KeyError("prompt not from this task")
    ans = final_answer(response)
    return float(ans is not None and answers_match(gold, ans))

  def group_answers(self, prompt, answers, max_classes: int = 16):
    """Equivalent answers vote together (`0.5` with `\\frac{1}{2}`): the
    `max_classes` most frequent distinct answers are merged by math-verify
    in the answer pool (rarer ones keep their own string)."""
    del prompt
    counts = collections.Counter(a for a in answers if a is not None)
    reps: list[str] = []
    rep_of: dict[str, str] = {}
    for a, _ in counts.most_common(max_classes):
      same = self.pool.map(answers_match, [(r, a) for r in reps], False)
      rep_of[a] = next((r for r, ok in zip(reps, same) if ok), a)
      if rep_of[a] == a:
        reps.append(a)
    return [rep_of.get(a, a) if a is not None else None for a in answers]

  def rewards(self, prompts, rows):
    """Rewards [P, N] of a batch: answers extracted here, the equivalence
    checks that need math-verify run in the answer pool under a hard
    deadline each (a timeout scores 0 and counts in errors["timeout"])."""
    out = np.zeros((len(prompts), max((len(r) for r in rows), default=0)),
                   np.float32)
    jobs, where = [], []
    for i, (prompt, row) in enumerate(zip(prompts, rows)):
      gold = self.gold_answer(prompt)
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
