"""The paper's two synthetic tasks (section 6.2) for an instruct LM, in
natural language through the tokenizer's chat template.

`polynomial_chat`: "Find a point (x, y) with an integer x between -2 and 3
that lies on y = 2x^2 - 3x + 5. ..." The problems (families, ranges, the
held-out rule that training ranges contain 0 and held-out ones do not) are
the embedded `polynomial` task's; reward 1 iff the final point lies on the
relation with x in range; the strategy is the point found (the paper's
rule: distinct final answers).

`multiplication_chat`: "Compute 47 x 16 by writing a factor as a sum or a
difference ... then give the product after ####." Reward 1 iff the final
number is the product (restating the question, or ending on an expression,
earns nothing); the strategy is the kind of decomposition the response
writes, recognised by code (`decomposition`): which factor is split, by
place value (40+7) or around a round number (50-3), both, factoring
(16 = 2 x 8), or none (DIRECT). Operand pairs as the embedded task's (a
held-out fifth of them never trains).

Answers are read from what models write (`tasks/answers.py`: `\\boxed{}`,
`####`, "the answer is", a last line); responses with no readable answer
score 0, count in `errors["unparsed"]` and get the DEGENERATE label.
"""

from __future__ import annotations

import re

import numpy as np

from poly_epo.labels import DEGENERATE
from poly_epo.tasks import multiplication as mul
from poly_epo.tasks import polynomial as poly
from poly_epo.tasks.answers import final_number, final_point
from poly_epo.tasks.base import Task, labels_by_answer, register_task

_SPLIT_IDS = {"train": 0, "heldout": 1}


def human_relation(family: str, coefs: tuple) -> str:
  """`y=2x^2-3x+5` -> `y = 2x^2 - 3x + 5` (and `x*y` -> `xy`)."""
  rel = poly.format_relation(family, coefs).replace("x*y", "xy")
  rel = re.sub(r"(?<=[0-9xy^])([+-])", r" \1 ", rel)
  return rel.replace("=", " = ").replace("= -", "= -")


def machine_relation(text: str) -> str:
  """Inverse of `human_relation` (spaces out, `xy` -> `x*y`)."""
  return re.sub(r"\s+", "", text).replace("xy", "x*y")


class _ChatTask(Task):
  chat_template = "auto"
  max_response_chars = 2048

  def _unparsed(self) -> None:
    self.errors["unparsed"] += 1


@register_task("polynomial_chat")
class PolynomialChatTask(_ChatTask):
  """Options: `max_abs_x`, `families` (see `polynomial`)."""

  _PROMPT = re.compile(r"between (-?\d+) and (-?\d+) that lies on (.+?)\. ")

  def __init__(self, max_abs_x: int = 6, families: tuple = ("quad", "lin")):
    super().__init__()
    self.problems = poly.PolynomialTask(max_abs_x=max_abs_x,
                                        families=tuple(families))

  @staticmethod
  def format_prompt(family, coefs, lo, hi) -> str:
    return (f"Find a point (x, y) with an integer x between {lo} and {hi} "
            f"that lies on {human_relation(family, coefs)}. Answer like "
            "this example: for y = x + 1 with x between 0 and 2, pick "
            "x = 2, then y = 2 + 1 = 3, so #### (2, 3)")

  def _prompts(self, split, seed, count):
    rng = np.random.default_rng([seed, _SPLIT_IDS[split], 7])
    return [self.format_prompt(*self.problems._problem(
        rng, split == "train")[:4]) for _ in range(count)]

  def parse_prompt(self, prompt: str):
    m = self._PROMPT.search(prompt)
    if not m:
      raise ValueError(f"not a polynomial_chat prompt: {prompt[:80]!r}")
    _, holds = poly.parse_relation(machine_relation(m.group(3)))
    return holds, int(m.group(1)), int(m.group(2))

  def _point(self, response):
    point = final_point(response)
    if point is None:
      self._unparsed()
    return point

  def _reward(self, prompt, response):
    holds, lo, hi = self.parse_prompt(prompt)
    point = self._point(response)
    return float(point is not None and lo <= point[0] <= hi
                 and holds(*point))

  def _answer(self, prompt, response):
    point = final_point(response)
    return None if point is None else f"({point[0]},{point[1]})"

  def _label(self, prompt, responses):
    return labels_by_answer([self._answer(prompt, r) for r in responses])


_PAREN = re.compile(r"\((\d+)([+-])(\d+)\)")
_EXPAND = re.compile(r"(\d+)\*(\d+)([+-])(\d+)\*(\d+)")
_TRIPLE = re.compile(r"(\d+)\*(\d+)\*(\d+)")


def decomposition(a: int, b: int, response: str) -> int:
  """The decomposition of a x b a response writes (multiplication's
  pattern ids): a parenthesised split `(p+q)` / `(p-q)` of an operand,
  an expansion `p*b + q*b`, or a factoring `a*c*d` (c*d = b); DIRECT when
  none appears."""
  text = mul.normalise(response)
  split = {}  # operand index -> "+" or "-"
  for p, op, q in _PAREN.findall(text):
    value = int(p) + int(q) if op == "+" else int(p) - int(q)
    for i, operand in enumerate((a, b)):
      if value == operand and min(int(p), int(q)) > 0:
        split.setdefault(i, op)
  for p, s, op, r, t in _EXPAND.findall(text):
    p, s, r, t = int(p), int(s), int(r), int(t)
    combine = (lambda u, v: u + v) if op == "+" else (lambda u, v: u - v)
    for i, (operand, other) in enumerate(((a, b), (b, a))):
      # p*other +- r*other (or other*p +- other*r) with p +- r = operand.
      for u, v in (((p, r), (s, t)), ((s, t), (p, r))):
        if v == (other, other) and combine(*u) == operand and min(u) > 0:
          split.setdefault(i, op)
  if 0 in split and 1 in split:
    return mul.BOTH_SPLIT
  if split:
    (i, op), = split.items()
    return {(0, "+"): mul.FIRST_ADD, (0, "-"): mul.FIRST_SUB,
            (1, "+"): mul.SECOND_ADD, (1, "-"): mul.SECOND_SUB}[(i, op)]
  for x, c, d in _TRIPLE.findall(text):
    x, c, d = int(x), int(c), int(d)
    if c > 1 and d > 1 and ((x == a and c * d == b) or
                            (x == b and c * d == a)):
      return mul.FACTOR
  return mul.DIRECT


@register_task("multiplication_chat")
class MultiplicationChatTask(_ChatTask):
  """Options: `first` and `second`: the operands' inclusive ranges."""

  _PROMPT = re.compile(r"Compute (\d+) x (\d+) ")

  def __init__(self, first=(11, 99), second=(3, 19)):
    super().__init__()
    self.first, self.second = tuple(first), tuple(second)
    if not (1 <= self.first[0] <= self.first[1] and
            1 <= self.second[0] <= self.second[1]):
      raise ValueError(f"multiplication_chat: bad operand ranges first="
                       f"{self.first} second={self.second}")

  def _pairs(self, rng, split):
    for _ in range(10_000):
      a = int(rng.integers(self.first[0], self.first[1] + 1))
      b = int(rng.integers(self.second[0], self.second[1] + 1))
      if mul.is_heldout(a, b) == (split == "heldout"):
        return a, b
    raise ValueError("multiplication_chat: no operand pair in the "
                     f"{split} split for these ranges")

  def _prompts(self, split, seed, count):
    rng = np.random.default_rng([seed, _SPLIT_IDS[split], 8])
    return [f"Compute {a} x {b} by writing a factor as a sum or a "
            "difference, for example 47 x 16 = 47 x (10 + 6). Show the "
            "steps briefly, then give the product after ####."
            for a, b in (self._pairs(rng, split) for _ in range(count))]

  def operands(self, prompt: str) -> tuple[int, int]:
    m = self._PROMPT.search(prompt)
    if not m:
      raise ValueError(f"not a multiplication_chat prompt: {prompt[:60]!r}")
    return int(m.group(1)), int(m.group(2))

  def _reward(self, prompt, response):
    a, b = self.operands(prompt)
    value = final_number(response)
    if value is None:
      self._unparsed()
    return float(value == a * b)

  def _answer(self, prompt, response):
    value = final_number(response)
    return None if value is None else str(value)

  def _label(self, prompt, responses):
    a, b = self.operands(prompt)
    return [DEGENERATE if final_number(r) is None else
            decomposition(a, b, r) for r in responses]
