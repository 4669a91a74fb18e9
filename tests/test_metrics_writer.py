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
