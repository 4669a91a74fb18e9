"""Hostile inputs every task's reward/label/answer must survive quickly."""

import time

HOSTILE = [
    "",
    "9" * 100_000,  # A huge number.
    "x" * 1_000_000,  # 1 MB of text.
    "(" * 50_000 + ")" * 50_000,  # Deep nesting.
    "\\boxed{" * 10_000,
    "(٣,٥)",  # Arabic-Indic digits.
    "12*３=٣٦",  # Full-width / Arabic-Indic digits.
    "__import__('os').system('echo pwned')",
    "\x00\x01\ufffd",
    "(1,2" + "," * 10_000,
]


def check_hostile(task, prompt, time_limit=2.0):
  """No exception escapes, nothing hangs, nothing hostile scores."""
  t0 = time.perf_counter()
  for text in HOSTILE:
    assert task.reward(prompt, text) == 0.0
    task.answer(prompt, text)
  labels = task.label(prompt, HOSTILE)
  assert labels is None or len(labels) == len(HOSTILE)
  assert task.reward(prompt, None) == 0.0  # Not even a string.
  assert time.perf_counter() - t0 < time_limit
