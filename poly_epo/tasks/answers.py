"""Final answers as instruct models write them, for the chat tasks.

A model asked for "the answer after ####" may instead box it, say "the
answer is ...", write "(x, y) = (2, 7)" or just end on it. `final_segment`
finds the text that holds the final answer, in this order of trust:

  1. the last `\\boxed{...}`;
  2. the text after the last `####` (GSM8K style), up to its line's end;
  3. the rest of the last line saying "answer is" / "answer:" / "result is";
  4. the last non-empty line.

The caller then reads a number or a point from that segment only, so a
restated question or an intermediate step earlier in the response earns
nothing. What cannot be read is counted by the task (`errors["unparsed"]`).
"""

from __future__ import annotations

import re

from poly_epo.tasks.math_check import last_boxed

_ANSWER_IS = re.compile(r"(?:answer|result|product|point)\s*(?:is|:|=)\s*(.+)$",
                        re.IGNORECASE)
_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?")
_POINT = re.compile(r"\(\s*(-?\d{1,6})\s*,\s*(-?\d{1,9})\s*\)")
_XY = re.compile(r"x\s*=\s*(-?\d{1,6})\b.{0,40}?\by\s*=\s*(-?\d{1,9})\b",
                 re.IGNORECASE | re.DOTALL)


def final_segment(text: str) -> str | None:
  """The part of `text` that states the final answer (see module doc)."""
  boxed = last_boxed(text)
  if boxed is not None:
    return boxed
  if "####" in text:
    return text.rsplit("####", 1)[1].strip().split("\n", 1)[0]
  lines = [l.strip() for l in text.strip().splitlines() if l.strip()]
  for line in reversed(lines[-3:]):
    m = _ANSWER_IS.search(line)
    if m:
      return m.group(1)
  return lines[-1] if lines else None


def _int(s: str) -> int | None:
  s = s.replace(",", "")
  try:
    value = float(s)
  except ValueError:
    return None
  return int(value) if value == int(value) else None


def final_number(text: str) -> int | None:
  """The integer the response ends on: the segment's last number, which
  must end the segment (a bare expression such as `23 x 47` is not an
  answer: the numbers in it are operands, not a result)."""
  seg = final_segment(text)
  if seg is None:
    return None
  seg = re.sub(r"\\[a-z]+\{([^{}]*)\}", r"\1", seg)  # \text{..}, \mathbf{..}
  seg = seg.strip().rstrip(".!").strip().strip("$*").strip()
  numbers = list(_NUMBER.finditer(seg))
  if not numbers:
    return None
  last = numbers[-1]
  before = seg[:last.start()].rstrip()
  if before and before[-1] in "x×*+-/^(":  # An expression, not a result.
    if not (before[-1] == "-" and last.group().startswith("-")):
      return None
  if seg[last.end():].strip():
    return None
  return _int(last.group())


def final_point(text: str) -> tuple[int, int] | None:
  """The integer point (x, y) the response ends on: the segment's last
  `(a, b)` or `x = a, y = b`, whichever comes later; then the same over
  the response's last 200 characters (a point written without a
  marker)."""
  for where in (final_segment(text), text[-200:]):
    if not where:
      continue
    found = [m for regex in (_POINT, _XY) for m in regex.finditer(where)]
    if found:
      last = max(found, key=lambda m: m.end())
      return int(last.group(1)), int(last.group(2))
  return None
