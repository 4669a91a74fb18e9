"""`math`: problems with reference answers from local JSONL or Parquet files.

Prompt (the paper's style): the problem, then "Please reason step by step, and
put your final answer within \\boxed{}." Reward 1 iff the last `\\boxed{...}`
of the response matches the reference under `math-verify`; when math-verify
is missing or fails, a strict normaliser decides. Labels come from the LM
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
import re

import numpy as np

from poly_epo.tasks.base import Task, register_task

INSTRUCTION = ("Please reason step by step, and put your final answer within "
               "\\boxed{}.")
_MAX_BOXED = 256


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


def last_boxed(text: str) -> str | None:
  """Content of the last \\boxed{...} (balanced braces), or None."""
  start = text.rfind("\\boxed")
  if start < 0:
    return None
  i = text.find("{", start)
  if i < 0:
    return None
  depth, j = 0, i
  while j < len(text) and j - i <= _MAX_BOXED:
    if text[j] == "{":
      depth += 1
    elif text[j] == "}":
      depth -= 1
      if depth == 0:
        return text[i + 1:j]
    j += 1
  return None


def normalise(answer: str) -> str:
  """Strict normaliser: drop spaces, $, \\left/\\right, \\!, trailing dot,
  text wrappers; `\\dfrac` -> `\\frac`."""
  s = answer.strip()
  s = re.sub(r"\\text\{([^{}]*)\}", r"\1", s)
  for old, new in (("\\left", ""), ("\\right", ""), ("\\!", ""), ("$", ""),
                   ("\\dfrac", "\\frac"), ("\\tfrac", "\\frac"), (" ", "")):
    s = s.replace(old, new)
  return s.rstrip(".")


def answers_match(gold: str, predicted: str) -> bool:
  if normalise(gold) == normalise(predicted):
    return True
  try:
    from math_verify import parse, verify
  except ImportError:
    return False
  try:
    return bool(verify(parse(f"${gold}$"), parse(f"${predicted}$")))
  except Exception:  # noqa: BLE001 - math-verify failures fall back to False.
    return False


@register_task("math")
class MathTask(Task):
  """Options: `path`, `heldout_path`, `problem_field`, `answer_field`,
  `heldout_fraction`, `chat_template` (auto | none)."""

  embedded = False
  max_response_chars = 16384

  def __init__(self, path: str, heldout_path: str | None = None,
               problem_field: str = "problem", answer_field: str = "answer",
               heldout_fraction: float = 0.1, chat_template: str = "auto"):
    super().__init__()
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

  def _answer(self, prompt, response):
    boxed = last_boxed(response)
    return None if boxed is None else normalise(boxed)

  def _reward(self, prompt, response):
    if prompt not in self.gold:
      raise KeyError("prompt not from this task")
    boxed = last_boxed(response)
    return float(boxed is not None and answers_match(self.gold[prompt], boxed))
