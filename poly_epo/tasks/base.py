"""The task interface: prompts, rewards, strategy labels, and a base corpus.

A task gives train and held-out prompt sources (seeded, never overlapping),
`reward(prompt, response) -> float in [0, 1]`, `label(prompt, responses) ->
list[int]` (or `None` to defer to an LM judge), `answer(prompt, response)` (the
normalised final answer majority voting compares), and for embedded tasks a
corpus of broad, unrefined attempts to pretrain a base policy on.

Subclasses implement the underscored methods; the public ones add the safety
rules: model text is never evaluated, inputs are cut to `max_response_chars`,
and any exception becomes reward 0 / DEGENERATE / no answer, counted in
`task.errors`.
"""

from __future__ import annotations

import json

import collections
from typing import Sequence

import numpy as np

from poly_epo.labels import DEGENERATE


class Task:
  """Base class; see the module docstring."""

  name = "task"
  embedded = False  # True when the task generates its own data and corpus.
  # "auto": prompts go through the tokenizer's chat template (one user turn
  # plus the generation prompt) when it has one; "none": raw text.
  chat_template = "none"
  alphabet = ""  # Characters its prompts and responses use (char tokenizer).
  max_response_chars = 512

  def __init__(self):
    self.errors: collections.Counter = collections.Counter()

  # ---- to implement ----
  def _prompts(self, split: str, seed: int, count: int) -> list[str]:
    raise NotImplementedError

  def _reward(self, prompt: str, response: str) -> float:
    raise NotImplementedError

  def _label(self, prompt: str, responses: Sequence[str]) -> list[int] | None:
    return None  # Defer to a judge.

  def _answer(self, prompt: str, response: str) -> str | None:
    return None

  def gives_labels(self) -> bool:
    """Whether `label` returns strategy labels (False: it defers to an LM
    judge, and without one every response is DEGENERATE)."""
    return True

  def corpus(self, seed: int, count: int) -> list[tuple[str, str]]:
    raise NotImplementedError(f"task {self.name!r} has no base corpus")

  # ---- public, safe ----
  def train_prompts(self, seed: int, count: int) -> list[str]:
    return self._prompts("train", seed, count)

  def heldout_prompts(self, seed: int, count: int) -> list[str]:
    return self._prompts("heldout", seed, count)

  def group_answers(self, prompt: str, answers: Sequence[str | None]
                    ) -> list[str | None]:
    """Answers mapped to one representative per equivalence class (majority
    voting counts them together); canonical strings already are."""
    del prompt
    return list(answers)

  def train_batch(self, seed: int, step: int, count: int) -> list[str]:
    """The prompts of RL step `step` (deterministic in seed and step, so a
    resumed run draws the same ones)."""
    return self.train_prompts(seed * 1_000_003 + step, count)

  def eval_sets(self, seed: int, count: int) -> dict[str, list[str]]:
    """{name: held-out prompts} evaluated during training ("heldout": the
    held-out split, unless a task has named sets)."""
    return {"heldout": self.heldout_prompts(seed, count)} if count else {}

  def filter_prompts(self, keep) -> dict[str, int]:
    """Drop prompts failing `keep` at load (generated tasks: none)."""
    del keep
    return {}

  def _cut(self, response) -> str:
    if not isinstance(response, str):
      raise TypeError(f"response must be a string, got {type(response)}")
    return response[:self.max_response_chars]

  def reward(self, prompt: str, response: str) -> float:
    try:
      value = float(self._reward(prompt, self._cut(response)))
    except Exception:  # noqa: BLE001 - counted, never raised.
      self.errors["reward"] += 1
      return 0.0
    if not 0.0 <= value <= 1.0:
      self.errors["reward_out_of_range"] += 1
      return 0.0
    return value

  def rewards(self, prompts: Sequence[str],
              rows: Sequence[Sequence[str]]) -> np.ndarray:
    """float32 [P, N] rewards of N responses per prompt (tasks with slow
    checks override this to batch them, e.g. `math`'s answer pool)."""
    return np.array([[self.reward(p, r) for r in row]
                     for p, row in zip(prompts, rows)], np.float32)

  def label(self, prompt: str, responses: Sequence[str]) -> list[int] | None:
    try:
      labels = self._label(prompt, [self._cut(r) for r in responses])
    except Exception:  # noqa: BLE001
      self.errors["label"] += 1
      return [DEGENERATE] * len(responses)
    if labels is not None and len(labels) != len(responses):
      self.errors["label_count"] += 1
      return [DEGENERATE] * len(responses)
    return labels

  def answer(self, prompt: str, response: str) -> str | None:
    try:
      return self._answer(prompt, self._cut(response))
    except Exception:  # noqa: BLE001
      self.errors["answer"] += 1
      return None


def identity(name: str, options) -> dict:
  """What a policy records of the task it was trained on (name and options,
  as JSON), so evaluation can check it evaluates the same task."""
  opts = options.to_dict() if hasattr(options, "to_dict") else dict(options)
  return {"name": name,
          "options": json.loads(json.dumps(opts, sort_keys=True, default=str))}


def check_corpus_skew(task: str, skew: float) -> float:
  """A task's `corpus_skew` option, checked: in [0, 10] (0 = uniform)."""
  if not 0 <= skew <= 10:
    raise ValueError(f"{task}: corpus_skew={skew} not in [0, 10]")
  return float(skew)


def labels_by_answer(answers: Sequence[str | None]) -> list[int]:
  """Distinct final answers -> labels 0, 1, ... by first occurrence;
  None (unparseable) -> DEGENERATE."""
  ids: dict[str, int] = {}
  out = []
  for a in answers:
    if a is None:
      out.append(DEGENERATE)
    else:
      out.append(ids.setdefault(a, len(ids)))
  return out


_TASKS: dict[str, type] = {}


def register_task(name: str):
  """Class decorator: make a `Task` subclass reachable as `tasks.get(name)`."""
  def wrap(cls):
    if name in _TASKS and _TASKS[name] is not cls:
      raise ValueError(f"task {name!r} is already registered")
    cls.name = name
    _TASKS[name] = cls
    return cls
  return wrap


def task_names() -> list[str]:
  return sorted(_TASKS)


def get(name: str, **options) -> Task:
  """Build the registered task `name` with its options."""
  if name not in _TASKS:
    raise ValueError(f"unknown task {name!r}; registered: "
                     f"{', '.join(task_names())}")
  try:
    return _TASKS[name](**options)
  except TypeError as e:
    raise ValueError(f"task {name!r}: bad options {sorted(options)}: {e}") \
        from None
