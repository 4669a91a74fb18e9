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

Example 1. Problem: solve x^2 - 5x + 6 = 0.
  Attempt 1 factors into (x-2)(x-3). Attempt 2 uses the quadratic formula.
  Attempt 3 factors as (x-2)(x-3) but writes x = 2, 4 by a slip.
  Attempt 4 prints "x = x = x = x = ...".
  Answer: {"labels": ["A", "B", "A", "DEGENERATE"]}

Example 2. Problem: how many subsets of {1,...,5} have an even sum?
  Attempt 1 lists all 32 subsets and counts. Attempt 2 pairs each subset with
  the one obtained by toggling element 1. Attempt 3 writes Python code.
  Answer: {"labels": ["A", "B", "DEGENERATE"]}

Reply with JSON only: {"labels": [...]} with exactly one label per attempt,
in order. Use short names ("A", "B", ...) and the word DEGENERATE.
"""


class JudgeFormatError(ValueError):
  """The judge's reply could not be read as labels."""


class JudgeCountError(JudgeFormatError):
  """The judge returned the wrong number of labels."""


def build_prompt(problem: str, responses: Sequence[str],
                 max_chars_per_response: int = 4000) -> str:
  parts = [RUBRIC, f"\nProblem:\n{problem}\n"]
  for i, r in enumerate(responses, 1):
    parts.append(f"\nAttempt {i}:\n{r[:max_chars_per_response]}\n")
  parts.append(f"\nThere are {len(responses)} attempts. JSON:")
  return "".join(parts)


def parse_labels(text: str, expected: int) -> list[int]:
  """Labels from the judge's reply: the first JSON object with a "labels"
  list. Names map to 0, 1, ... by first occurrence; "DEGENERATE" (any case)
  to DEGENERATE. Raises JudgeFormatError / JudgeCountError."""
  if not isinstance(text, str) or len(text) > 100_000:
    raise JudgeFormatError("judge reply is not a string of sane length")
  obj = None
  for m in re.finditer(r"\{", text):
    try:
      obj, _ = json.JSONDecoder().raw_decode(text[m.start():])
    except json.JSONDecodeError:
      continue
    if isinstance(obj, dict) and "labels" in obj:
      break
    obj = None
  if obj is None or not isinstance(obj.get("labels"), list):
    raise JudgeFormatError(f"no {{\"labels\": [...]}} in reply: {text[:200]!r}")
  names = obj["labels"]
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
