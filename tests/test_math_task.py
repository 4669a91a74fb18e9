"""poly_epo.tasks.math: data loading errors, boxed answers, reward."""

import json
import os

import pytest

from poly_epo import tasks
from poly_epo.labels import DEGENERATE
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


def _verl_rows(n, offset=0):
  return [{"data_source": "polaris",
           "prompt": [{"role": "user", "content":
                       f"What is {i} + {i}?\nPlease reason step by step, and "
                       "put your final answer within \\boxed{}."}],
           "reward_model": {"style": "rule", "ground_truth": str(2 * i)}}
          for i in range(offset, offset + n)]


def test_verl_parquet_and_jsonl(tmp_path):
  import pyarrow as pa
  import pyarrow.parquet as pq
  path = tmp_path / "train.parquet"
  pq.write_table(pa.Table.from_pylist(_verl_rows(6)), str(path))
  t = tasks.get("math", path=str(path), heldout_fraction=0.0, workers=1)
  prompts = t.train_prompts(0, 6)
  assert all(p.count("\\boxed{}") == 1 for p in prompts)  # Not added twice.
  p = next(p for p in prompts if p.startswith("What is 3 + 3?"))
  assert t.rewards([p], [["so \\boxed{6}", "\\boxed{7}"]]).tolist() == \
      [[1.0, 0.0]]
  jl = tmp_path / "train.jsonl"
  jl.write_text("\n".join(json.dumps(r) for r in _verl_rows(3)))
  assert len(tasks.get("math", path=str(jl), heldout_fraction=0.0,
                       workers=1).splits["train"]) == 3


def test_conflicting_duplicates_name_both_rows(tmp_path):
  bad = tmp_path / "dup.jsonl"
  bad.write_text("\n".join(json.dumps(r) for r in [
      {"problem": "1+1", "answer": "2"}, {"problem": "2+2", "answer": "4"},
      {"problem": "1+1", "answer": "3"}]))
  with pytest.raises(ValueError, match=r"dup\.jsonl record 1 and .*record 3"):
    tasks.get("math", path=str(bad))


def test_epochs_have_no_repeats_and_named_sets_are_separate(tmp_path):
  train = tmp_path / "t.jsonl"
  train.write_text("\n".join(json.dumps(r) for r in _verl_rows(10)))
  aime = tmp_path / "aime.jsonl"
  aime.write_text("\n".join(json.dumps(r) for r in _verl_rows(4, 100)))
  t = tasks.get("math", path=str(train), heldout_fraction=0.0, workers=1,
                eval_sets={"aime25": str(aime)})
  epoch0 = t.train_batch(0, 0, 5) + t.train_batch(0, 1, 5)
  assert len(set(epoch0)) == 10  # Every problem once per epoch.
  assert set(t.train_batch(0, 2, 5) + t.train_batch(0, 3, 5)) == set(epoch0)
  assert t.train_batch(0, 1, 4) == t.train_batch(0, 1, 4)  # Resumable.
  assert t.train_batch(0, 3, 4) != t.train_batch(1, 3, 4)
  sets = t.eval_sets(0, 0)
  assert list(sets) == ["aime25"] and len(sets["aime25"]) == 4
  assert t.rewards(sets["aime25"][:1], [["\\boxed{-1}"]]).shape == (1, 1)
  dropped = t.filter_prompts(lambda p: "What is 1 +" not in p)
  assert dropped == {"train": 1, "heldout": 0, "aime25": 0}


def test_without_math_verify_the_task_refuses_to_start(monkeypatch):
  import poly_epo.tasks.math as math_mod
  monkeypatch.setattr(math_mod, "math_verify", None)
  with pytest.raises(ImportError, match=r"math-verify.*\[math\]"):
    tasks.get("math", path=SAMPLE)


def test_equivalent_answers_vote_together(task):
  p = task.train_prompts(0, 1)[0]
  got = task.group_answers(p, ["\\frac{1}{2}", "0.5", None, "3", "1/2", "3"])
  assert got[0] == got[1] == got[4]  # One class for 1/2.
  assert got[3] == got[5] == "3" and got[2] is None
  assert got[0] != got[3]


def _jsonl(path, rows):
  path.write_text("".join(json.dumps(r) + "\n" for r in rows))
  return str(path)


GOOD = [{"problem": f"What is {i} + {i}?", "answer": str(2 * i)}
        for i in range(1, 5)]


@pytest.mark.parametrize("bad, reason", [
    ({"problem": "Solve x.", "answer": None}, "missing answer"),
    ({"problem": "Solve y.", "answer": ""}, "empty answer"),
    ({"problem": "Solve z.", "answer": "  "}, "empty answer"),
    ({"problem": "Roots?", "answer": ["2", "-2"]}, "answer is a list"),
    ({"problem": "Half?", "answer": float("nan")}, "answer is nan"),
    ({"problem": None, "answer": "3"}, "missing problem"),
    ({"problem": "", "answer": "3"}, "empty problem"),
    ({"problem": {"text": "x"}, "answer": "3"}, "problem is a dict"),
])
def test_hostile_rows_are_refused_or_dropped_with_a_count(tmp_path, bad,
                                                          reason):
  path = _jsonl(tmp_path / "d.jsonl", GOOD[:2] + [bad] + GOOD[2:])
  with pytest.raises(ValueError, match=rf"d\.jsonl record 3: {reason}"):
    tasks.get("math", path=path, heldout_fraction=0.0)
  t = tasks.get("math", path=path, heldout_fraction=0.0, bad_rows="drop")
  assert sum(t.dropped.values()) == 1 and reason in next(iter(t.dropped))
  assert len(t.splits["train"]) == 4
  # Nothing becomes the text "None", "" or a list's repr.
  assert not {"None", "", "['2', '-2']", "nan"} & set(t.gold.values())


def test_numbers_are_converted_explicitly(tmp_path):
  path = _jsonl(tmp_path / "n.jsonl", [
      {"problem": "One plus one?", "answer": 2},
      {"problem": "Two halves?", "answer": 1.0},
      {"problem": "A half?", "answer": 0.5}])
  t = tasks.get("math", path=path, heldout_fraction=0.0)
  assert t.reward(t.format_prompt("One plus one?"), "\\boxed{2}") == 1.0
  assert t.reward(t.format_prompt("Two halves?"), "\\boxed{1}") == 1.0
  assert t.gold_answer(t.format_prompt("A half?")) == "0.5"


def test_whitespace_duplicates_and_train_eval_conflicts(tmp_path):
  dup = _jsonl(tmp_path / "dup.jsonl", GOOD + [
      {"problem": "What is  1 +  1?\n", "answer": "3"}])
  with pytest.raises(ValueError, match=r"dup\.jsonl record 1 and .*record 5"):
    tasks.get("math", path=dup, heldout_fraction=0.0)
  train = _jsonl(tmp_path / "train.jsonl", GOOD)
  ev = _jsonl(tmp_path / "aime.jsonl", [{"problem": "What is 1 + 1?",
                                         "answer": "3"}])
  with pytest.raises(ValueError, match=r"train\.jsonl record 1 and "
                     r".*aime\.jsonl record 1"):
    tasks.get("math", path=train, heldout_fraction=0.0,
              eval_sets={"aime": ev})
  same = _jsonl(tmp_path / "same.jsonl", [{"problem": "What is 1 + 1? ",
                                           "answer": "2"}])
  t = tasks.get("math", path=train, heldout_fraction=0.0,
                eval_sets={"same": same})
  p = t.format_prompt("What is 1 + 1?")
  assert t.reward(p, "\\boxed{2}") == 1.0  # Never overwritten.


def test_non_utf8_names_file_and_line(tmp_path):
  path = tmp_path / "latin1.jsonl"
  path.write_bytes(json.dumps(GOOD[0]).encode() + b"\n" +
                   '{"problem": "caf\xe9?", "answer": "1"}\n'.encode("latin-1"))
  with pytest.raises(ValueError, match=r"latin1\.jsonl:2: not UTF-8"):
    tasks.get("math", path=str(path), heldout_fraction=0.0)


def test_labels_by_canonical_answer_without_a_judge():
  judged = tasks.get("math", path=SAMPLE, workers=1)
  prompt = judged.train_prompts(0, 1)[0]
  responses = ["so \\boxed{1/2}", "\\boxed{\\frac{1}{2}}", "\\boxed{3}",
               "no answer"]
  assert judged.label(prompt, responses) is None and not judged.gives_labels()
  by_answer = tasks.get("math", path=SAMPLE, workers=1, labels="answer")
  labels = by_answer.label(prompt, responses)
  assert labels[0] == labels[1] != labels[2]  # 1/2 and \frac{1}{2} agree.
  assert labels[3] == DEGENERATE and by_answer.gives_labels()
  with pytest.raises(ValueError, match="labels='votes'"):
    tasks.get("math", path=SAMPLE, labels="votes")
