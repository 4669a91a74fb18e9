"""Pure answer checking for the `math` task, imported by the answer-pool
workers (poly_epo/tasks/sandbox.py): the final answer's extraction, a strict
normaliser, and math-verify equivalence. No JAX here, so workers start fast.
"""

from __future__ import annotations

import re

_MAX_BOXED = 256
_ANSWER_LINE = re.compile(r"(?:final answer|answer)\s*(?:is|:)\s*(.+)$",
                          re.IGNORECASE)

try:  # Imported once in the forkserver, so each worker has it ready.
  import math_verify  # noqa: F401
except ImportError:  # MathTask refuses to start without it.
  math_verify = None


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


def final_answer(text: str) -> str | None:
  """The answer as verl's maths reward takes it: the last \\boxed{}, else
  an "answer: ..." / "the answer is ..." final line."""
  boxed = last_boxed(text)
  if boxed is not None:
    return boxed
  for line in reversed(text.strip().splitlines()[-3:]):
    m = _ANSWER_LINE.search(line.strip())
    if m:
      return m.group(1).strip().rstrip(".")[:_MAX_BOXED]
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


def verify(gold: str, predicted: str) -> bool:
  """math-verify equivalence (the slow, hostile-input part: run it in the
  answer pool)."""
  from math_verify import parse, verify as mv_verify
  return bool(mv_verify(parse(f"${gold}$"), parse(f"${predicted}$")))


def answers_match(gold: str, predicted: str) -> bool:
  """Equal after normalising, else math-verify (False when it fails)."""
  if normalise(gold) == normalise(predicted):
    return True
  try:
    return verify(gold, predicted)
  except Exception:  # noqa: BLE001 - math-verify failures mean "no".
    return False
