"""poly_epo.tasks.base: registry, user tasks, the safety wrappers."""

import pytest

from poly_epo import tasks
from poly_epo.set_rl import DEGENERATE


def test_registry_has_builtins_and_errors():
  for name in ("polynomial", "multiplication", "math"):
    assert name in tasks.task_names()
  with pytest.raises(ValueError, match="unknown task 'nope'"):
    tasks.get("nope")
  with pytest.raises(ValueError, match="bad options"):
    tasks.get("polynomial", colour="red")
  for name in ("polynomial", "multiplication"):
    with pytest.raises(ValueError, match=rf"{name}: corpus_skew=-1 not in"):
      tasks.get(name, corpus_skew=-1)


def test_user_task_without_editing_the_package():
  @tasks.register_task("test_echo")
  class Echo(tasks.Task):
    def _prompts(self, split, seed, count):
      return [f"{split}-{seed}-{i}" for i in range(count)]

    def _reward(self, prompt, response):
      if response == "boom":
        raise RuntimeError("bad")
      return float(response == prompt)

    def _label(self, prompt, responses):
      return [0] * (len(responses) + 1)  # Wrong count on purpose.

  t = tasks.get("test_echo")
  assert t.train_prompts(1, 2) == ["train-1-0", "train-1-1"]
  assert t.reward("a", "a") == 1.0
  assert t.reward("a", "boom") == 0.0 and t.errors["reward"] == 1
  assert t.label("a", ["x", "y"]) == [DEGENERATE, DEGENERATE]
  assert t.errors["label_count"] == 1


def test_labels_by_answer():
  assert tasks.labels_by_answer(["b", None, "a", "b"]) == [0, DEGENERATE, 1, 0]
