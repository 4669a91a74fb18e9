"""The run's metrics: `<workdir>/metrics.jsonl` (one JSON object per row) and
TensorBoard scalars under `<workdir>/tb`. Only the main process writes. On
an object store (`gs://`) the JSONL file is rewritten whole per row (no
appends there).

On resume the JSONL file is rewritten (atomically) to the rows the restored
checkpoint covers: train rows before its step, and the evaluation of its own
params (written at that step); a torn last line of a killed run is dropped.
"""

from __future__ import annotations

import json

import numpy as np

from poly_epo import distributed, storage


class MetricsWriter:

  def __init__(self, workdir: str, start_step: int):
    self.path = storage.join(workdir, "metrics.jsonl")
    self.remote = storage.is_url(workdir)
    self.tb = None
    self.active = distributed.is_main()
    if not self.active:
      return
    kept = []
    if storage.exists(self.path):
      for line in storage.read_text(self.path).splitlines():
        try:
          rec = json.loads(line)
        except json.JSONDecodeError:
          continue  # A torn last line from a killed run.
        step = rec.get("step", 0)
        is_train = any(k.startswith("train/") for k in rec)
        if step < start_step or (step == start_step and not is_train):
          kept.append(line + "\n")
    self.lines = kept
    storage.write_text(self.path, "".join(kept))
    try:
      from tensorboardX import SummaryWriter
      self.tb = SummaryWriter(storage.join(workdir, "tb"))
    except Exception as e:  # noqa: BLE001 - metrics.jsonl still has all.
      print(f"TensorBoard disabled ({storage.join(workdir, 'tb')}: {e})")

  def write(self, step: int, values: dict, prefix: str = "train") -> None:
    if not self.active:
      return
    rec = {"step": step, **{f"{prefix}/{k}": v for k, v in values.items()}}
    line = json.dumps(rec) + "\n"
    self.lines.append(line)
    if self.remote:  # Object stores cannot append: rewrite (atomic).
      storage.write_text(self.path, "".join(self.lines))
    else:
      with open(self.path, "a") as f:
        f.write(line)
    if self.tb is None:
      return
    for k, v in values.items():
      if isinstance(v, (int, float)) and np.isfinite(v):
        self.tb.add_scalar(f"{prefix}/{k}", v, step)
    self.tb.flush()

  def close(self) -> None:
    if self.tb is not None:
      self.tb.close()
