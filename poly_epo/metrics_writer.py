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


def _ranges(steps: list[int]) -> str:
  out, start = [], steps[0]
  for a, b in zip(steps, steps[1:] + [None]):
    if b != a + 1:
      out.append(str(start) if start == a else f"{start}-{a}")
      start = b
  return ", ".join(out)


class MetricsWriter:

  def __init__(self, workdir: str, start_step: int,
               final_step: int | None = None, log=print):
    """Keep the rows the restored checkpoint covers: train rows before
    `start_step`, and evaluation rows at it (unless it is `final_step`, whose
    evaluation the finishing run writes again). Lines that are not JSON
    objects are dropped with a count; train steps the checkpoint covers but
    that have no row (a killed write) are listed in `self.gaps` and said."""
    self.path = storage.join(workdir, "metrics.jsonl")
    self.remote = storage.is_url(workdir)
    self.tb = None
    self.gaps: list[int] = []
    self.eval_steps: set[int] = set()  # Steps with a kept evaluation row.
    self.active = distributed.is_main()
    if not self.active:
      return
    kept, bad, train_steps = [], 0, set()
    if storage.exists(self.path):
      for line in storage.read_text(self.path).splitlines():
        try:
          rec = json.loads(line)
        except json.JSONDecodeError:
          rec = None
        if not isinstance(rec, dict) or not isinstance(rec.get("step"),
                                                       int):
          bad += line.strip() != ""
          continue
        step = rec["step"]
        is_train = any(k.startswith("train/") for k in rec)
        keep_eval = step == start_step and start_step != final_step
        if step < start_step or (not is_train and keep_eval):
          kept.append(line + "\n")
          if is_train:
            train_steps.add(step)
          else:
            self.eval_steps.add(step)
    if bad:
      log(f"{self.path}: dropped {bad} line(s) that are not metric rows "
          "(torn or foreign)")
    self.gaps = [s for s in range(start_step) if s not in train_steps]
    if self.gaps and storage.exists(self.path):
      log(f"{self.path}: no row for checkpointed step(s) "
          f"{_ranges(self.gaps)} (lost when a run was killed mid-write; the "
          "training state is intact)")
    self.lines = kept
    storage.write_text(self.path, "".join(kept))
    try:
      from tensorboardX import SummaryWriter
      self.tb = SummaryWriter(storage.join(workdir, "tb"))
    except Exception as e:  # noqa: BLE001 - metrics.jsonl still has all.
      log(f"TensorBoard disabled ({storage.join(workdir, 'tb')}: {e})")

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
