"""The run's metrics: `<workdir>/metrics.jsonl` (one JSON object per row) and
TensorBoard scalars under `<workdir>/tb`. Only the main process writes.

On resume the JSONL file is rewritten (atomically) to the rows the restored
checkpoint covers: train rows before its step, and the evaluation of its own
params (written at that step); a torn last line of a killed run is dropped.
"""

from __future__ import annotations

import json
import os

import numpy as np

from poly_epo import distributed


class MetricsWriter:

  def __init__(self, workdir: str, start_step: int):
    self.path = os.path.join(workdir, "metrics.jsonl")
    self.tb = None
    if not distributed.is_main():
      return
    kept = []
    if os.path.exists(self.path):
      with open(self.path) as f:
        for line in f:
          try:
            rec = json.loads(line)
          except json.JSONDecodeError:
            continue  # A torn last line from a killed run.
          step = rec.get("step", 0)
          is_train = any(k.startswith("train/") for k in rec)
          if step < start_step or (step == start_step and not is_train):
            kept.append(line if line.endswith("\n") else line + "\n")
    with open(self.path + ".tmp", "w") as f:
      f.writelines(kept)
    os.replace(self.path + ".tmp", self.path)
    from tensorboardX import SummaryWriter
    self.tb = SummaryWriter(os.path.join(workdir, "tb"))

  def write(self, step: int, values: dict, prefix: str = "train") -> None:
    if self.tb is None:
      return
    rec = {"step": step, **{f"{prefix}/{k}": v for k, v in values.items()}}
    with open(self.path, "a") as f:
      f.write(json.dumps(rec) + "\n")
    for k, v in values.items():
      if isinstance(v, (int, float)) and np.isfinite(v):
        self.tb.add_scalar(f"{prefix}/{k}", v, step)
    self.tb.flush()

  def close(self) -> None:
    if self.tb is not None:
      self.tb.close()
