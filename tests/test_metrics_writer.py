"""poly_epo.metrics_writer: rows land in JSONL and TensorBoard; on resume the
file keeps exactly what the checkpoint covers and drops a torn line."""

import json
import os

from poly_epo.metrics_writer import MetricsWriter


def test_write_then_resume_trims_to_the_checkpoint(tmp_path):
  w = MetricsWriter(str(tmp_path), 0)
  for step in range(5):
    w.write(step, {"loss": float(step)})
  w.write(2, {"pass@1": 0.5}, prefix="eval")
  w.write(4, {"pass@1": 0.6}, prefix="eval")
  w.close()
  assert os.listdir(tmp_path / "tb")
  with open(tmp_path / "metrics.jsonl", "a") as f:
    f.write('{"step": 5, "train/lo')  # Torn by a kill.
  MetricsWriter(str(tmp_path), 4).close()  # Resume from the step-4 checkpoint.
  rows = [json.loads(l) for l in open(tmp_path / "metrics.jsonl")]
  assert [(r["step"], "train/loss" in r) for r in rows] == [
      (0, True), (1, True), (2, True), (3, True), (2, False), (4, False)]


def test_foreign_lines_and_lost_rows_are_reported_not_fatal(tmp_path):
  path = tmp_path / "metrics.jsonl"
  rows = [{"step": s, "train/loss": 1.0} for s in (0, 1, 3)]
  path.write_text("null\n" + "\n".join(json.dumps(r) for r in rows) +
                  "\n7\n[1, 2]\n{\"no_step\": 1}\n{\"step\": 4, \"tr")
  said = []
  w = MetricsWriter(str(tmp_path), 4, log=said.append)
  w.close()
  assert any("dropped 5 line(s)" in s for s in said), said
  assert w.gaps == [2]
  assert any("step(s) 2 " in s for s in said), said
  kept = [json.loads(l)["step"] for l in open(path)]
  assert kept == [0, 1, 3]


def test_resuming_at_the_final_step_drops_its_evaluation_for_rewrite(
    tmp_path):
  w = MetricsWriter(str(tmp_path), 0)
  for step in range(4):
    w.write(step, {"loss": 1.0})
  w.write(2, {"pass@1": 0.5}, prefix="eval")
  w.write(4, {"pass@1": 0.6}, prefix="eval")  # The final evaluation.
  w.close()
  MetricsWriter(str(tmp_path), 4, final_step=4).close()
  rows = [json.loads(l) for l in open(tmp_path / "metrics.jsonl")]
  assert [(r["step"], "eval/pass@1" in r) for r in rows] == [
      (0, False), (1, False), (2, False), (3, False), (2, True)]
