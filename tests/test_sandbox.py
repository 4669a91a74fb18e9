"""poly_epo.tasks.sandbox and the math task's batched, sandboxed rewards:
results match direct calls, a stuck check is killed at its deadline and the
pool carries on, and a batch with hostile answers finishes in bounded time."""

import os
import time

import numpy as np

from poly_epo import tasks
from poly_epo.tasks.math_check import answers_match
from poly_epo.tasks.sandbox import AnswerPool

SAMPLE = os.path.join(os.path.dirname(__file__), "data", "math_sample.jsonl")


def test_pool_matches_direct_calls_and_survives_a_stuck_job():
  pool = AnswerPool(workers=2, deadline=1.0)
  try:
    jobs = [("\\frac{1}{2}", "0.5"), ("2", "3"), ("x+1", "1+x"),
            ("\\sqrt{4}", "2")]
    assert pool.map(answers_match, jobs) == [answers_match(*j) for j in jobs]
    t0 = time.perf_counter()
    got = pool.map(time.sleep, [(30,), (0,), (30,)], default="late")
    assert got == ["late", None, "late"]
    assert pool.timeouts == 2
    assert time.perf_counter() - t0 < 20  # Killed at the deadline, not 30 s.
    assert pool.map(answers_match, jobs[:2]) == [True, False]  # Still works.
  finally:
    pool.close()


def test_hostile_answers_in_a_large_batch_finish_in_bounded_time():
  task = tasks.get("math", path=SAMPLE, heldout_fraction=0.0, workers=2,
                   answer_timeout=0.5)
  prompts = task.train_prompts(0, 64)
  hostile = ["\\boxed{5^{5^{5^{5^{5}}}}}", "\\boxed{100000!}",
             "\\boxed{" + "(" * 10_000 + "1" + ")" * 10_000 + "}",
             "\\boxed{9^{9^{9^{9}}} - 9^{9^{9^{9}}}}"]
  rows, want = [], []
  for i, p in enumerate(prompts):
    gold = task.gold_answer(p)
    row, row_want = [], []
    for j in range(16):  # 64 x 16 = 1,024 responses.
      k = i * 16 + j
      if k % 25 == 3:  # 41 hostile answers.
        row.append("work... " + hostile[k % len(hostile)])
        row_want.append(0.0)
      elif k % 2:
        row.append(f"so \\boxed{{{gold}}}")
        row_want.append(1.0)
      else:
        row.append("\\boxed{-12345}")
        row_want.append(0.0)
    rows.append(row)
    want.append(row_want)
  t0 = time.perf_counter()
  got = task.rewards(prompts, rows)
  seconds = time.perf_counter() - t0
  print(f"\n1,024 responses, 41 hostile, 2 workers, 0.5 s deadline: "
        f"{seconds:.1f} s, {task.errors['timeout']} timeouts")
  np.testing.assert_array_equal(got, np.array(want, np.float32))
  # Stuck checks were killed (the timing itself is printed, not asserted:
  # at most every hostile answer waits out its deadline, two at a time).
  assert 0 < task.errors["timeout"] <= 41
  task.pool.close()
