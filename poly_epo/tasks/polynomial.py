"""`polynomial`: find an integer point (x, y) on a relation, with x in a range.

Prompt: `y=2x^2-3x+5, x in [-3,4]:`  Response: `(2,7)`.

Families: quadratics `y=ax^2+bx+c`, lines `y=ax+b`, products `x*y=c`, sums
of squares `x^2+y^2=c`. Reward 1 iff the pair satisfies the relation with x in
the stated range; the strategy label is the answer pair itself (distinct final
answers), DEGENERATE when nothing parses.

No universal shortcut: training prompts state x-ranges that contain 0 (so
"x=0, y=c" solves every quadratic and line among them, the shortcut RL finds),
held-out prompts state ranges that exclude 0, and x=0 never solves a product
or a sum of squares. A policy collapsed onto x=0 loses held-out pass@k; one
that kept many answers does not. The base corpus covers both kinds of range.
"""

from __future__ import annotations

import math
import re

import numpy as np

from poly_epo.metrics import skew_weights
from poly_epo.tasks.base import (Task, check_corpus_skew, labels_by_answer,
                                 register_task)

_ANSWER = re.compile(r"\s*\((-?[0-9]{1,4}),(-?[0-9]{1,7})\)\s*")
_PROMPT = re.compile(
    r"(?P<rel>[-+*^=xy0-9]{3,40}), x in \[(?P<lo>-?[0-9]{1,3}),"
    r"(?P<hi>-?[0-9]{1,3})\]:")
FAMILIES = ("quad", "lin", "prod", "sq")
_SPLIT_IDS = {"train": 0, "heldout": 1, "corpus": 2}


def _term(coef: int, var: str, first: bool) -> str:
  if coef == 0:
    return ""
  sign = "-" if coef < 0 else ("" if first else "+")
  mag = abs(coef)
  body = (var if mag == 1 else f"{mag}{var}") if var else str(mag)
  return sign + body


def format_relation(family: str, coefs: tuple) -> str:
  if family == "quad":
    a, b, c = coefs
    return "y=" + (_term(a, "x^2", True) + _term(b, "x", False)
                   + _term(c, "", False))
  if family == "lin":
    a, b = coefs
    return "y=" + _term(a, "x", True) + _term(b, "", False)
  if family == "prod":
    return f"x*y={coefs[0]}"
  return f"x^2+y^2={coefs[0]}"


def parse_relation(rel: str):
  """(family, evaluator) for a relation string made by `format_relation`."""
  m = re.fullmatch(r"x\*y=(-?[0-9]{1,4})", rel)
  if m:
    c = int(m.group(1))
    return "prod", lambda x, y: x * y == c
  m = re.fullmatch(r"x\^2\+y\^2=([0-9]{1,4})", rel)
  if m:
    c = int(m.group(1))
    return "sq", lambda x, y: x * x + y * y == c
  if not rel.startswith("y="):
    raise ValueError(f"unknown relation {rel!r}")
  coefs = {"x^2": 0, "x": 0, "": 0}
  for sign, mag, var in re.findall(r"([+-]?)([0-9]*)(x\^2|x|)", rel[2:]):
    if not mag and not var:
      continue
    value = int(mag) if mag else 1
    coefs[var] += -value if sign == "-" else value
  a, b, c = coefs["x^2"], coefs["x"], coefs[""]
  family = "quad" if a else "lin"
  return family, lambda x, y: y == a * x * x + b * x + c


def solutions(family: str, coefs: tuple, lo: int, hi: int) -> list:
  out = []
  for x in range(lo, hi + 1):
    if family == "quad":
      a, b, c = coefs
      out.append((x, a * x * x + b * x + c))
    elif family == "lin":
      out.append((x, coefs[0] * x + coefs[1]))
    elif family == "prod":
      if x != 0 and coefs[0] % x == 0:
        out.append((x, coefs[0] // x))
    else:
      rest = coefs[0] - x * x
      if rest >= 0 and math.isqrt(rest)**2 == rest:
        out += [(x, math.isqrt(rest))] + ([(x, -math.isqrt(rest))]
                                          if rest else [])
  return out


def skew_rank(solution) -> tuple:
  """The corpus_skew order of a solution (x, y): x = 0, 1, -1, 2, -2, ...,
  and y > 0 before y < 0 at the same x."""
  return abs(solution[0]), -solution[0], -solution[1]


@register_task("polynomial")
class PolynomialTask(Task):
  """See the module docstring. Options: `max_abs_x` (range bound),
  `mistake_rate` (share of wrong corpus answers), `families`, `corpus_skew`
  (0: corpus answers uniform over a problem's solutions; s > 0: the
  solution of rank r by |x| (x = 0 first, then 1, -1, 2, -2, ...) drawn with
  weight (r + 1)^-s, so the base prefers x = 0, the shortcut, like a
  pretrained LM's dominant mode, and knows the others rarely)."""

  embedded = True
  alphabet = "0123456789-+*^=xy(), in[]:"
  max_response_chars = 64

  def __init__(self, max_abs_x: int = 6, mistake_rate: float = 0.3,
               families: tuple = FAMILIES, corpus_skew: float = 0.0):
    super().__init__()
    self.corpus_skew = check_corpus_skew("polynomial", corpus_skew)
    bad = [f for f in families if f not in FAMILIES]
    if bad or not families:
      raise ValueError(f"polynomial: unknown families {bad}; use {FAMILIES}")
    if not 3 <= max_abs_x <= 99:
      raise ValueError(f"polynomial: max_abs_x={max_abs_x} not in [3, 99]")
    self.max_abs_x = max_abs_x
    self.mistake_rate = mistake_rate
    self.families = tuple(families)

  def _range(self, rng, contains_zero: bool):
    m = self.max_abs_x
    if contains_zero:
      return -int(rng.integers(1, m // 2 + 1)), int(rng.integers(1, m // 2 + 1))
    width = int(rng.integers(2, m // 2 + 1))
    if rng.random() < 0.5:
      lo = int(rng.integers(1, m - width + 2))
      return lo, lo + width - 1
    hi = -int(rng.integers(1, m - width + 2))
    return hi - width + 1, hi

  def _problem(self, rng, contains_zero: bool):
    while True:
      family = self.families[int(rng.integers(len(self.families)))]
      lo, hi = self._range(rng, contains_zero)
      if family == "quad":
        coefs = (int(rng.integers(1, 3)) * int(rng.choice([-1, 1])),
                 int(rng.integers(-4, 5)), int(rng.integers(-9, 10)))
      elif family == "lin":
        coefs = (int(rng.integers(1, 5)) * int(rng.choice([-1, 1])),
                 int(rng.integers(-9, 10)))
      elif family == "prod":
        coefs = (int(rng.choice([6, 8, 10, 12, 12, 18, 20, 24, 24, 30, 36]))
                 * int(rng.choice([-1, 1])),)
      else:
        coefs = (int(rng.choice([5, 10, 13, 17, 25, 25, 26, 29, 34, 37, 41,
                                  50, 65])),)
      sols = solutions(family, coefs, lo, hi)
      if len(sols) >= 2:
        return family, coefs, lo, hi, sols

  @staticmethod
  def format_prompt(family, coefs, lo, hi) -> str:
    return f"{format_relation(family, coefs)}, x in [{lo},{hi}]:"

  def _prompts(self, split, seed, count):
    rng = np.random.default_rng([seed, _SPLIT_IDS[split]])
    return [self.format_prompt(*self._problem(rng, split == "train")[:4])
            for _ in range(count)]

  def corpus(self, seed, count):
    """Unrefined attempts: prompts with both kinds of range, answers spread
    over the solutions (uniformly, or by `corpus_skew`), `mistake_rate` of
    them wrong."""
    rng = np.random.default_rng([seed, _SPLIT_IDS["corpus"]])
    out = []
    for _ in range(count):
      family, coefs, lo, hi, sols = self._problem(rng, rng.random() < 0.5)
      if self.corpus_skew:
        ranked = sorted(sols, key=skew_rank)
        x, y = ranked[int(rng.choice(len(ranked), p=skew_weights(
            len(ranked), self.corpus_skew)))]
      else:  # Today's corpus, draw for draw.
        x, y = sols[int(rng.integers(len(sols)))]
      if rng.random() < self.mistake_rate:
        if rng.random() < 0.7:
          y += int(rng.choice([-3, -2, -1, 1, 2, 3]))
        else:
          x = int(rng.choice([lo - 1, hi + 1]))
      out.append((self.format_prompt(family, coefs, lo, hi), f"({x},{y})"))
    return out

  @staticmethod
  def parse_prompt(prompt: str):
    m = _PROMPT.fullmatch(prompt.strip())
    if not m:
      raise ValueError(f"not a polynomial prompt: {prompt[:80]!r}")
    family, holds = parse_relation(m.group("rel"))
    return family, holds, int(m.group("lo")), int(m.group("hi"))

  @staticmethod
  def parse_answer(response: str):
    m = _ANSWER.fullmatch(response)
    return (int(m.group(1)), int(m.group(2))) if m else None

  def _reward(self, prompt, response):
    pair = self.parse_answer(response)
    if pair is None:
      return 0.0
    _, holds, lo, hi = self.parse_prompt(prompt)
    x, y = pair
    return float(lo <= x <= hi and holds(x, y))

  def _answer(self, prompt, response):
    pair = self.parse_answer(response)
    return None if pair is None else f"({pair[0]},{pair[1]})"

  def _label(self, prompt, responses):
    return labels_by_answer([self._answer(prompt, r) for r in responses])
