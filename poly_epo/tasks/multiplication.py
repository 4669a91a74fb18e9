"""`multiplication`: a product worked through a written decomposition.

Prompt: `47*16=`  Response: `47*(10+6)=470+282=752`.

Reward 1 iff the number after the last `=` is the product. The strategy label
is the decomposition pattern of the first step, read by a parser (spaces, and
`x` or `×` for `*`, do not matter):

  DIRECT       `752`                      no decomposition
  FIRST_ADD    `(40+7)*16=...`            split the first operand, additive
  FIRST_SUB    `(50-3)*16=...`            first operand from a round number
  SECOND_ADD   `47*(10+6)=...`            split the second operand, additive
  SECOND_SUB   `47*(20-4)=...`            second operand from a round number
  BOTH_SPLIT   `(40+7)*(10+6)=...`        split both (partial products)
  FACTOR       `47*2*8=94*8=...`          factorise the second operand
  DEGENERATE   anything else

Operands: two-digit first (11-99), second 3-19; a held-out split of operand
pairs (about one in five) never appears in training prompts.
"""

from __future__ import annotations

import re

import numpy as np

from poly_epo.labels import DEGENERATE
from poly_epo.metrics import skew_weights
from poly_epo.tasks.base import Task, check_corpus_skew, register_task

DIRECT, FIRST_ADD, FIRST_SUB, SECOND_ADD, SECOND_SUB, BOTH_SPLIT, FACTOR = \
    range(7)
PATTERN_NAMES = ("direct", "first_add", "first_sub", "second_add",
                 "second_sub", "both_split", "factor")
_N = r"[0-9]{1,6}"
_FIRST_STEP = (
    (BOTH_SPLIT, re.compile(rf"\({_N}[+-]{_N}\)\*\({_N}[+-]{_N}\)")),
    (FIRST_ADD, re.compile(rf"\({_N}\+{_N}\)\*{_N}")),
    (FIRST_SUB, re.compile(rf"\({_N}-{_N}\)\*{_N}")),
    (SECOND_ADD, re.compile(rf"{_N}\*\({_N}\+{_N}\)")),
    (SECOND_SUB, re.compile(rf"{_N}\*\({_N}-{_N}\)")),
    (FACTOR, re.compile(rf"{_N}\*{_N}\*{_N}")),
    (DIRECT, re.compile(_N)),
)
_PROMPT = re.compile(r"\s*([0-9]{1,4})\s*\*\s*([0-9]{1,4})\s*=\s*")
_SPLIT_IDS = {"train": 0, "heldout": 1, "corpus": 2}
# The corpus_skew order, most frequent first: the textbook split of the
# first operand, then the others (a pretrained LM's dominant mode and tail).
SKEW_ORDER = (FIRST_ADD, SECOND_ADD, DIRECT, BOTH_SPLIT, FIRST_SUB,
              SECOND_SUB, FACTOR)


def normalise(text: str) -> str:
  return re.sub(r"\s+", "", text).replace("×", "*").replace("x", "*")


def pattern(response: str) -> int:
  """The decomposition pattern of a response's first step (or DEGENERATE)."""
  text = normalise(response)
  first = text.split("=", 1)[0]
  for label, regex in _FIRST_STEP:
    if regex.fullmatch(first):
      return label
  return DEGENERATE


def final_answer(response: str) -> int | None:
  text = normalise(response)
  m = re.fullmatch(r"(?:.*=)?([0-9]{1,7})", text)
  return int(m.group(1)) if m else None


def is_heldout(a: int, b: int) -> bool:
  return (a * 7 + b * 13) % 5 == 0


def worked(a: int, b: int, label: int) -> str | None:
  """A correct written decomposition of a*b in `label`'s pattern, or None
  when the pattern does not apply to these operands."""
  p = a * b
  t, u = divmod(a, 10)
  if label == DIRECT:
    return f"{p}"
  if label == FIRST_ADD and u:
    return f"({t * 10}+{u})*{b}={t * 10 * b}+{u * b}={p}"
  if label == FIRST_SUB and u >= 6:
    r, d = (t + 1) * 10, (t + 1) * 10 - a
    return f"({r}-{d})*{b}={r * b}-{d * b}={p}"
  bt, bu = divmod(b, 10)
  if label == SECOND_ADD and bt and bu:
    return f"{a}*({bt * 10}+{bu})={a * bt * 10}+{a * bu}={p}"
  if label == SECOND_SUB and bu >= 6:
    r, d = (bt + 1) * 10, (bt + 1) * 10 - b
    return f"{a}*({r}-{d})={a * r}-{a * d}={p}"
  if label == BOTH_SPLIT and u and bt and bu:
    return (f"({t * 10}+{u})*({bt * 10}+{bu})={t * 10 * bt * 10}+"
            f"{t * 10 * bu}+{u * bt * 10}+{u * bu}={p}")
  if label == FACTOR:
    for f in (2, 3, 5):
      if b % f == 0 and b // f > 1:
        return f"{a}*{f}*{b // f}={a * f}*{b // f}={p}"
  return None


@register_task("multiplication")
class MultiplicationTask(Task):
  """See the module docstring. Options: `mistake_rate` of corpus answers;
  `corpus_skew` (0: every pattern equally often where it applies; s > 0:
  the pattern of rank r in SKEW_ORDER drawn with weight (r + 1)^-s, redrawn
  with the operands when it does not apply to them)."""

  embedded = True
  alphabet = "0123456789+-*=()"
  max_response_chars = 128
  label_names = PATTERN_NAMES  # Labels are pattern ids, the same everywhere.

  def __init__(self, mistake_rate: float = 0.3, corpus_skew: float = 0.0):
    super().__init__()
    self.mistake_rate = mistake_rate
    self.corpus_skew = check_corpus_skew("multiplication", corpus_skew)
    self._skew_p = skew_weights(len(SKEW_ORDER), self.corpus_skew)

  def _pairs(self, rng, split: str):
    while True:
      a, b = int(rng.integers(11, 100)), int(rng.integers(3, 20))
      if split == "corpus" or is_heldout(a, b) == (split == "heldout"):
        return a, b

  def _prompts(self, split, seed, count):
    rng = np.random.default_rng([seed, _SPLIT_IDS[split]])
    return [f"{a}*{b}=" for a, b in (self._pairs(rng, split)
                                     for _ in range(count))]

  def corpus(self, seed, count):
    """Attempts in every applicable pattern (uniformly, or by
    `corpus_skew`), `mistake_rate` of them with one wrong number (an
    intermediate or the result)."""
    rng = np.random.default_rng([seed, _SPLIT_IDS["corpus"]])
    out = []
    while len(out) < count:
      a, b = self._pairs(rng, "corpus")
      if self.corpus_skew:
        label = SKEW_ORDER[int(rng.choice(len(SKEW_ORDER), p=self._skew_p))]
      else:  # Today's corpus, draw for draw.
        label = int(rng.integers(len(PATTERN_NAMES)))
      text = worked(a, b, label)
      if text is None:
        continue
      if rng.random() < self.mistake_rate:
        numbers = list(re.finditer(r"[0-9]+", text.split("=", 1)[-1]))
        m = numbers[int(rng.integers(len(numbers)))]
        off = len(text) - len(text.split("=", 1)[-1]) if "=" in text else 0
        wrong = max(0, int(m.group()) + int(rng.choice([-10, -2, -1, 1, 2,
                                                         10])))
        text = text[:off + m.start()] + str(wrong) + text[off + m.end():]
      out.append((f"{a}*{b}=", text))
    return out

  def _reward(self, prompt, response):
    m = _PROMPT.fullmatch(prompt)
    if not m:
      raise ValueError(f"not a multiplication prompt: {prompt[:40]!r}")
    return float(final_answer(response) == int(m.group(1)) * int(m.group(2)))

  def _answer(self, prompt, response):
    value = final_answer(response)
    return None if value is None else str(value)

  def _label(self, prompt, responses):
    return [pattern(r) for r in responses]
