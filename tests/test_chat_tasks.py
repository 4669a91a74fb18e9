"""The chat versions of the synthetic tasks (poly_epo/tasks/chat.py) and the
answer reader they share (poly_epo/tasks/answers.py)."""

import numpy as np
import pytest

from poly_epo import tasks
from poly_epo.labels import DEGENERATE
from poly_epo.tasks import multiplication as mul
from poly_epo.tasks import polynomial as poly
from poly_epo.tasks.answers import final_number, final_point
from poly_epo.tasks.chat import decomposition, human_relation, \
    machine_relation


@pytest.mark.parametrize("text,expected", [
    ("so the product is \\boxed{1081}.", 1081),
    ("23 x 47 = 1081\n#### 1081", 1081),
    ("#### 1,081\nThanks!", 1081),
    ("The answer is 1081.", 1081),
    ("(20+3) x 47 = 940 + 141 = 1081", 1081),
    ("The product is 23 x 47", None),  # An expression is not a result.
    ("#### 23 x 47", None),
    ("I think it is about 1081 or so", None),  # Words after the number.
    ("", None),
    ("The answer is -12", -12),
    ("#### 2.5", None),  # Not an integer.
])
def test_final_number_reads_only_a_final_result(text, expected):
  assert final_number(text) == expected


@pytest.mark.parametrize("text,expected", [
    ("pick x = 2, then y = 7, so #### (2, 7)", (2, 7)),
    ("The point is (-1, 4).", (-1, 4)),
    ("(x, y) = (3, 14)", (3, 14)),
    ("\\boxed{(0, 5)}", (0, 5)),
    ("Try (1, 2). No wait: x = 3 and y = 9", (3, 9)),
    ("#### (x, y)", None),
    ("no idea", None),
])
def test_final_point_reads_what_models_write(text, expected):
  assert final_point(text) == expected


def test_relation_text_round_trips_and_evaluates():
  rng = np.random.default_rng(0)
  task = poly.PolynomialTask(families=poly.FAMILIES)
  for _ in range(200):
    family, coefs, lo, hi, sols = task._problem(rng, bool(rng.integers(2)))
    text = human_relation(family, coefs)
    assert " " in text and "*" not in text
    _, holds = poly.parse_relation(machine_relation(text))
    for x, y in sols:
      assert holds(x, y)
    assert not holds(sols[0][0], sols[0][1] + 1)


def test_polynomial_chat_rewards_by_brute_force():
  task = tasks.get("polynomial_chat")
  rng = np.random.default_rng(1)
  for prompt in task.train_prompts(0, 20):
    holds, lo, hi = task.parse_prompt(prompt)
    assert lo <= 0 <= hi  # Training ranges contain 0...
    for _ in range(10):
      x, y = int(rng.integers(-8, 9)), int(rng.integers(-60, 61))
      want = float(lo <= x <= hi and holds(x, y))
      assert task.reward(prompt, f"So #### ({x}, {y})") == want
  for prompt in task.heldout_prompts(0, 20):
    _, lo, hi = task.parse_prompt(prompt)
    assert not lo <= 0 <= hi  # ...held-out ones do not.
  assert set(task.train_prompts(0, 50)).isdisjoint(task.heldout_prompts(0, 50))


def test_polynomial_chat_labels_are_points_and_unparsed_counted():
  task = tasks.get("polynomial_chat")
  prompt = task.train_prompts(0, 1)[0]
  labels = task.label(prompt, ["#### (1, 2)", "(1,2)", "#### (2, 3)", "hm"])
  assert labels[0] == labels[1] != labels[2] and labels[3] == DEGENERATE
  before = task.errors["unparsed"]
  task.reward(prompt, "I cannot say")
  assert task.errors["unparsed"] == before + 1


@pytest.mark.parametrize("a,b,text,expected", [
    (47, 16, "47 x 16 = 1081", mul.DIRECT),
    (47, 16, "(40 + 7) x 16 = 640 + 112 = 752", mul.FIRST_ADD),
    (47, 16, "47 x 16 = (50 - 3) x 16 = 800 - 48 = 752", mul.FIRST_SUB),
    (47, 16, "47 x (10 + 6) = 470 + 282 = 752", mul.SECOND_ADD),
    (47, 16, "47 × (20 - 4) = 940 - 188 = 752", mul.SECOND_SUB),
    (47, 16, "(40+7)(10+6) = 400+240+70+42 = 752", mul.BOTH_SPLIT),
    (47, 16, "(40+7) x (10+6) = 752", mul.BOTH_SPLIT),
    (47, 16, "47 x 2 x 8 = 94 x 8 = 752", mul.FACTOR),
    (47, 16, "40 x 16 + 7 x 16 = 640 + 112 = 752", mul.FIRST_ADD),
    (47, 16, "50*16 - 3*16 = 752", mul.FIRST_SUB),
    (47, 16, "(30 + 5) x 16 = 560", mul.DIRECT),  # Not a split of 47.
])
def test_decomposition_kinds(a, b, text, expected):
  assert decomposition(a, b, text) == expected


def test_multiplication_chat_pays_only_the_right_final_number():
  task = tasks.get("multiplication_chat")
  prompt = task.train_prompts(0, 1)[0]
  a, b = task.operands(prompt)
  right = f"{a} x {b} = ({a - 1} + 1) x {b} = {a * b}\n#### {a * b}"
  assert task.reward(prompt, right) == 1.0
  assert task.reward(prompt, f"#### {a * b + 1}") == 0.0
  assert task.reward(prompt, f"The product is {a} x {b}") == 0.0
  assert task.label(prompt, [right, "nothing"]) == [mul.FIRST_ADD,
                                                    DEGENERATE]
  heldout = [task.operands(p) for p in task.heldout_prompts(0, 30)]
  assert all(mul.is_heldout(x, y) for x, y in heldout)
  assert not any(mul.is_heldout(*task.operands(p))
                 for p in task.train_prompts(0, 30))
