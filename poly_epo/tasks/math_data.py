"""Maths problem files: flat JSONL / Parquet (`problem`, `answer` fields, names
configurable) and verl's format (Parquet or JSONL rows with `prompt` = a list
of chat messages, `reward_model.ground_truth` and `data_source`), the format
of the authors' POLARIS / AIME / MATH-500 files. Every problem names its file
and row.

Rows are validated at load: a problem must be a non-empty string; an answer a
non-empty string or a finite number (converted explicitly: 2 and 2.0 -> "2",
0.5 -> "0.5"). Anything else (None, empty or blank text, a list ground truth,
NaN, a nested object) is refused with the file, row and reason, or dropped and
counted per reason when `bad_rows="drop"`. Non-UTF-8 bytes name file and line.
"""

from __future__ import annotations

import collections
import json
import math
import os
import re
from typing import NamedTuple

BAD_ROWS = ("error", "drop")


class Record(NamedTuple):
  problem: str
  answer: str
  where: str  # "file row i" (for error messages)
  source: str  # verl's data_source, or the file name


def _rows(path: str) -> tuple[list, str]:
  from poly_epo import storage
  if not storage.exists(path):
    raise FileNotFoundError(f"math data file {path!r} does not exist")
  path = storage.local_copy(path)  # gs:// and other remote files.
  if path.endswith(".parquet"):
    try:
      import pyarrow.parquet as pq
    except ImportError:
      raise ImportError("reading Parquet needs pyarrow: "
                        "pip install -e '.[math]'") from None
    return pq.read_table(path).to_pylist(), "row"
  records = []
  with open(path, "rb") as f:
    for i, raw in enumerate(f, 1):
      try:
        line = raw.decode("utf-8")
      except UnicodeDecodeError as e:
        raise ValueError(f"{path}:{i}: not UTF-8 (byte {raw[e.start]:#04x} "
                         f"at column {e.start + 1})") from None
      if not line.strip():
        continue
      try:
        records.append(json.loads(line))
      except json.JSONDecodeError as e:
        raise ValueError(f"{path}:{i}: not valid JSON ({e.msg})") from None
  return records, "record"


def normalise_problem(text: str) -> str:
  """The key duplicates and conflicts are found on: whitespace collapsed."""
  return re.sub(r"\s+", " ", text).strip()


def _text(value, what: str) -> tuple[str | None, str | None]:
  """(text, None) or (None, reason) for a problem or an answer."""
  if value is None:
    return None, f"missing {what}"
  if isinstance(value, bool):
    return None, f"{what} is a boolean"
  if isinstance(value, (int, float)) and what == "answer":
    if isinstance(value, float) and not math.isfinite(value):
      return None, f"{what} is {value}"
    if isinstance(value, float) and value.is_integer():
      value = int(value)
    return str(value), None
  if isinstance(value, (list, tuple)):
    return None, f"{what} is a list (several ground truths are not supported)"
  if not isinstance(value, str):
    return None, f"{what} is a {type(value).__name__}, not text"
  if not value.strip():
    return None, f"empty {what}"
  return value, None


def _verl(rec: dict, where: str):
  """(problem, ground truth) raw values of a verl row, or None when it is
  not one."""
  prompt, rm = rec.get("prompt"), rec.get("reward_model")
  if not isinstance(prompt, list) or not isinstance(rm, dict):
    return None
  users = [m.get("content") for m in prompt
           if isinstance(m, dict) and m.get("role") == "user"]
  if not users:
    raise ValueError(f"{where}: verl row without a user message in 'prompt'")
  if "ground_truth" not in rm:
    raise ValueError(f"{where}: verl row without reward_model.ground_truth")
  return users[-1], rm["ground_truth"]


def load_records(path: str, problem_field: str = "problem",
                 answer_field: str = "answer", bad_rows: str = "error",
                 dropped: collections.Counter | None = None) -> list[Record]:
  """Every valid (problem, answer) of a file. A bad row raises ValueError
  naming file, row and reason (`bad_rows="error"`), or is skipped and
  counted in `dropped[reason]` (`"drop"`). A problem given twice (up to
  whitespace) with different answers is an error naming both rows; exact
  duplicates are kept once."""
  if bad_rows not in BAD_ROWS:
    raise ValueError(f"config.task.options.bad_rows={bad_rows!r}: 'error' "
                     "or 'drop'")
  dropped = collections.Counter() if dropped is None else dropped
  records, unit = _rows(path)
  out: list[Record] = []
  seen: dict[str, Record] = {}
  for i, rec in enumerate(records, 1):
    where = f"{path} {unit} {i}"
    if not isinstance(rec, dict):
      raise ValueError(f"{where}: not an object")
    pair = _verl(rec, where)
    if pair is None:
      for field in (problem_field, answer_field):
        if field not in rec:
          raise ValueError(f"{where}: missing field {field!r} (nor a verl "
                           "row: prompt + reward_model.ground_truth)")
      pair = (rec[problem_field], rec[answer_field])
    problem, why = _text(pair[0], "problem")
    answer, why_a = _text(pair[1], "answer")
    reason = why or why_a
    if reason:
      if bad_rows == "error":
        raise ValueError(f"{where}: {reason} (fix the row, or set "
                         "config.task.options.bad_rows=drop to skip such "
                         "rows)")
      dropped[reason] += 1
      continue
    r = Record(problem, answer.strip(), where,
               str(rec.get("data_source") or os.path.basename(path)))
    key = normalise_problem(r.problem)
    if key in seen:
      if seen[key].answer != r.answer:
        raise ValueError(f"{seen[key].where} and {where}: the same "
                         f"problem with different answers "
                         f"({seen[key].answer!r} vs {r.answer!r})")
      continue
    seen[key] = r
    out.append(r)
  if not out:
    raise ValueError(f"{path}: no valid records")
  return out


def check_conflicts(named: dict[str, list[Record]]) -> None:
  """The same problem (up to whitespace) in two files (the training file and
  an eval set, or two eval sets) must have the same answer: a ValueError
  names both rows otherwise."""
  seen: dict[str, Record] = {}
  for rows in named.values():
    for r in rows:
      key = normalise_problem(r.problem)
      first = seen.setdefault(key, r)
      if first.answer != r.answer:
        raise ValueError(f"{first.where} and {r.where}: the same problem "
                         f"with different answers ({first.answer!r} vs "
                         f"{r.answer!r})")
