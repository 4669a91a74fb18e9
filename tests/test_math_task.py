"""poly_epo.tasks.math: data loading errors, boxed answers, reward."""

import json
import os

import pytest

from poly_epo import tasks
from poly_epo.tasks.math import last_boxed, normalise
from task_safety import check_hostile

SAMPLE = os.path.join(os.path.dirname(__file__), "data", "math_sample.jsonl")


@pytest.fixture(scope="module")
def task():
  return tasks.get("math", path=SAMPLE, heldout_fraction=0.3)


def test_splits(task):
  train = {p for p in task.train_prompts(0, 50)}
  held = {p for p in task.heldout_prompts(0, 50)}
  assert train and held and not train & held
  assert all(p.endswith("\\boxed{}.") for p in train)


def test_rewards(task):
  p = task.format_prompt("Compute $\\frac{1}{2}+\\frac{1}{4}$.")
  assert task.reward(p, "1/2 + 1/4 = 3/4, so \\boxed{\\frac{3}{4}}.") == 1.0
  assert task.reward(p, "\\boxed{\\dfrac{3}{4}}") == 1.0
  assert task.reward(p, "\\boxed{0.75}") == 1.0  # math-verify: numeric.
  assert task.reward(p, "\\boxed{\\frac{1}{4}}") == 0.0
  assert task.reward(p, "so the answer is 3/4") == 1.0  # A final line.
  assert task.reward(p, "I think 3/4 or so") == 0.0  # Neither.
  assert task.reward(p, "\\boxed{1} then \\boxed{\\frac{3}{4}}") == 1.0
  assert task.label(p, ["a", "b"]) is None  # Deferred to the judge.
  assert task.answer(p, "\\boxed{ \\frac{3}{4} }") == "\\frac{3}{4}"


def test_hostile(task):
  check_hostile(task, task.train_prompts(0, 1)[0], time_limit=10.0)


def test_boxed_and_normalise():
  assert last_boxed("\\boxed{a{b}c}") == "a{b}c"
  assert last_boxed("\\boxed{unclosed") is None
  assert normalise("$\\left(1, 2\\right)$.") == "(1,2)"


def test_bad_data_names_file_and_line(tmp_path):
  bad = tmp_path / "bad.jsonl"
  bad.write_text('{"problem": "1+1", "answer": "2"}\n{"problem": oops}\n')
  with pytest.raises(ValueError, match=r"bad\.jsonl:2"):
    tasks.get("math", path=str(bad))
  missing = tmp_path / "missing_field.jsonl"
  missing.write_text(json.dumps({"question": "1+1", "answer": "2"}) + "\n")
  with pytest.raises(ValueError, match="missing field 'problem'"):
    tasks.get("math", path=str(missing))
  ok = tasks.get("math", path=str(missing), problem_field="question",
                 heldout_fraction=0.0)
  assert ok.train_prompts(0, 1)[0].startswith("1+1")
  with pytest.raises(FileNotFoundError, match="nowhere"):
    tasks.get("math", path=str(tmp_path / "nowhere.jsonl"))


def test_parquet(tmp_path):
  pa = pytest.importorskip("pyarrow")
  import pyarrow.parquet as pq
  path = str(tmp_path / "d.parquet")
  pq.write_table(pa.table({"problem": ["What is 2+3?"], "answer": ["5"]}),
                 path)
  t = tasks.get("math", path=path, heldout_fraction=0.0)
  p = t.train_prompts(0, 1)[0]
  assert t.reward(p, "\\boxed{5}") == 1.0


def test_chat_template_option_is_checked():
  from poly_epo import tasks
  path = os.path.join(os.path.dirname(__file__), "data", "math_sample.jsonl")
  assert tasks.get("math", path=path).chat_template == "auto"
  assert tasks.get("math", path=path, chat_template="none").chat_template \
      == "none"
  with pytest.raises(ValueError, match="chat_template"):
    tasks.get("math", path=path, chat_template="yes")
