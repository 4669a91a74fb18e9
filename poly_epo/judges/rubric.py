"""The strategy-judging rubric (DESIGN 3.4) and parsing of the judge's answer."""

from __future__ import annotations

import json
import re
from typing import Sequence

from poly_epo.labels import DEGENERATE

RUBRIC = """\
You compare several attempts at the same problem and group them by STRATEGY.

Two attempts share a strategy only when the overall approach AND the method
used at every key step are the same. These do NOT make a new strategy:
different wording or formatting, different variable names, a different final
answer, an arithmetic slip. These DO: a different overall plan (e.g. algebra
versus casework versus a geometric argument), or the same plan carried out
with a different key technique (e.g. completing the square versus the
quadratic formula).

Mark an attempt DEGENERATE when it is gibberish, off-topic, code instead of
mathematics, a bare guess with no reasoning, or mostly repetition.

Work through the attempts in order. For each one, first write a one-line
summary of its approach (the plan and the key technique at each step), then
its strategy name; summarising before naming keeps the grouping honest.

Example 1. Problem: solve x^2 - 5x + 6 = 0.
  Attempt 1 factors into (x-2)(x-3). Attempt 2 uses the quadratic formula.
  Attempt 3 factors as (x-2)(x-3) but writes x = 2, 4 by a slip.
  Attempt 4 prints "x = x = x = x = ...".
  Answer: {"attempts": [
    {"summary": "factor the quadratic", "strategy": "A"},
    {"summary": "quadratic formula", "strategy": "B"},
    {"summary": "factor the quadratic (arithmetic slip)", "strategy": "A"},
    {"summary": "repeats one phrase", "strategy": "DEGENERATE"}]}

Example 2. Problem: how many subsets of {1,...,5} have an even sum?
  Attempt 1 lists all 32 subsets and counts. Attempt 2 pairs each subset with
  the one obtained by toggling element 1. Attempt 3 writes Python code.
  Answer: {"attempts": [
    {"summary": "enumerate all subsets", "strategy": "A"},
    {"summary": "bijection toggling element 1", "strategy": "B"},
    {"summary": "code instead of mathematics", "strategy": "DEGENERATE"}]}

An attempt may have been cut in the middle to fit; the cut is marked and
both its beginning and its end are shown. Reply with JSON only, one entry
per attempt, in order: {"attempts": [{"summary": ..., "strategy": ...}]}.
Use short strategy names ("A", "B", ...) and the word DEGENERATE.
"""


class JudgeFormatError(ValueError):
  """The judge's reply could not be read as labels."""


class JudgeCountError(JudgeFormatError):
  """The judge returned the wrong number of labels."""


CUT_MARKER = "\n[... {n} characters cut from the middle ...]\n"


def head_and_tail(text: str, max_chars: int) -> str:
  """`text` if it fits, else its beginning and its end (half the budget
  each) around a marker: repetition loops often start late, so the judge
  must see the end."""
  if len(text) <= max_chars:
    return text
  half = max_chars // 2
  return text[:half] + CUT_MARKER.format(n=len(text) - 2 * half) + \
      text[len(text) - half:]


def build_prompt(problem: str, responses: Sequence[str]) -> str:
  """The judge's prompt: rubric, problem, every attempt (already cut to
  the judge's budget), and the count."""
  parts = [RUBRIC, f"\nProblem:\n{problem}\n"]
  for i, r in enumerate(responses, 1):
    parts.append(f"\nAttempt {i}:\n{r}\n")
  parts.append(f"\nThere are {len(responses)} attempts. JSON:")
  return "".join(parts)


def _find_object(text: str):
  """The first JSON object in `text` with an "attempts" or "labels" key."""
  for m in re.finditer(r"\{", text):
    try:
      obj, _ = json.JSONDecoder().raw_decode(text[m.start():])
    except json.JSONDecodeError:
      continue
    if isinstance(obj, dict) and ("attempts" in obj or "labels" in obj):
      return obj
  return None


def parse_labels(text: str, expected: int) -> list[int]:
  """Labels from the judge's reply: the first JSON object with an
  "attempts" list (entries with a "strategy", after their "summary") or a
  plain "labels" list; text around it (thinking, prose) is ignored. Names
  map to 0, 1, ... by first occurrence; "DEGENERATE" (any case) to
  DEGENERATE. Raises JudgeFormatError / JudgeCountError."""
  if not isinstance(text, str) or len(text) > 200_000:
    raise JudgeFormatError("judge reply is not a string of sane length")
  obj = _find_object(text)
  if obj is None:
    raise JudgeFormatError(f"no {{\"attempts\": [...]}} in reply: "
                           f"{text[:200]!r}")
  if "attempts" in obj:
    entries = obj["attempts"]
    if not isinstance(entries, list):
      raise JudgeFormatError("\"attempts\" is not a list")
    names = []
    for e in entries:
      name = e.get("strategy", e.get("label")) if isinstance(e, dict) else e
      names.append(name)
  else:
    names = obj["labels"]
    if not isinstance(names, list):
      raise JudgeFormatError("\"labels\" is not a list")
  if len(names) != expected:
    raise JudgeCountError(f"judge gave {len(names)} labels for {expected} "
                          "responses")
  ids: dict[str, int] = {}
  out = []
  for name in names:
    if not isinstance(name, (str, int)) or isinstance(name, bool):
      raise JudgeFormatError(f"label {name!r} is not a string or integer")
    key = str(name).strip()
    if key.upper() == "DEGENERATE":
      out.append(DEGENERATE)
    else:
      out.append(ids.setdefault(key, len(ids)))
  return out
