"""Maths problem files: flat JSONL / Parquet (`problem`, `answer` fields, names
configurable) and verl's format (Parquet or JSONL rows with `prompt` = a list
of chat messages, `reward_model.ground_truth` and `data_source`), the format
of the authors' POLARIS / AIME / MATH-500 files. Every problem names its file
and row.
"""

from __future__ import annotations

import json
import os
from typing import NamedTuple


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
  with open(path, encoding="utf-8") as f:
    for i, line in enumerate(f, 1):
      if not line.strip():
        continue
      try:
        records.append(json.loads(line))
      except json.JSONDecodeError as e:
        raise ValueError(f"{path}:{i}: not valid JSON ({e.msg})") from None
  return records, "record"


def _verl(rec: dict, where: str) -> tuple[str, str] | None:
  """(problem, answer) of a verl row, or None when it is not one."""
  prompt, rm = rec.get("prompt"), rec.get("reward_model")
  if not isinstance(prompt, list) or not isinstance(rm, dict):
    return None
  users = [m.get("content") for m in prompt
           if isinstance(m, dict) and m.get("role") == "user"]
  if not users or not isinstance(users[-1], str):
    raise ValueError(f"{where}: verl row without a user message in 'prompt'")
  if "ground_truth" not in rm:
    raise ValueError(f"{where}: verl row without reward_model.ground_truth")
  return users[-1], str(rm["ground_truth"])


def load_records(path: str, problem_field: str = "problem",
                 answer_field: str = "answer") -> list[Record]:
  """Every (problem, answer) of a file. A problem given twice with different
  answers is an error naming both rows; exact duplicates are kept once."""
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
      pair = (str(rec[problem_field]), str(rec[answer_field]))
    r = Record(pair[0], pair[1], where,
               str(rec.get("data_source") or os.path.basename(path)))
    if r.problem in seen:
      if seen[r.problem].answer != r.answer:
        raise ValueError(f"{seen[r.problem].where} and {where}: the same "
                         f"problem with different answers "
                         f"({seen[r.problem].answer!r} vs {r.answer!r})")
      continue
    seen[r.problem] = r
    out.append(r)
  if not out:
    raise ValueError(f"{path}: no records")
  return out
