"""`python -m poly_epo.train --config configs/<exp>.py [--config.field=value]`.

Pretrains the embedded task's base policy when missing, runs RL (Poly-EPO by
default; `--config.algorithm=grpo` etc. for the baselines), evaluates base and
trained policy on held-out prompts and prints a before/after table. A run
resumes from its workdir's latest checkpoint. Config, data, checkpoint and
judge errors print one line naming the field or file and exit 1
(POLY_EPO_TRACEBACK=1 shows the traceback).
"""

from __future__ import annotations

import os
import sys
import time

from absl import app, logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Experiment config file (configs/*.py).", lock_config=True)


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)  # Orbax is chatty at INFO.
  cfg = _CONFIG.value
  if cfg is None:
    raise app.UsageError("--config=configs/<exp>.py is required")
  if cfg.get("distributed", False):
    from poly_epo import distributed
    distributed.initialize(cfg.coordinator_address, cfg.num_processes,
                           cfg.process_id)
  from poly_epo import distributed, evaluation, trainer
  t0 = time.perf_counter()
  try:
    summary = trainer.train(cfg)
  except (ValueError, OSError, RuntimeError, FloatingPointError) as e:
    # Config, data, checkpoint and judge problems: one line naming the
    # culprit, no traceback (POLY_EPO_TRACEBACK=1 shows it). A stop
    # (SIGTERM, SIGINT) exits 128 + the signal.
    if os.environ.get("POLY_EPO_TRACEBACK"):
      raise
    print(f"error: {e}", file=sys.stderr)
    return distributed.exit_code(e)
  except KeyboardInterrupt:  # Ctrl-C before the run could save anything.
    print("error: interrupted (SIGINT) during start-up; nothing to save: "
          "run the same command to start again", file=sys.stderr)
    return 130
  if distributed.is_main():
    print(evaluation.format_summary(summary))
    print(f"wall time {time.perf_counter() - t0:.0f} s; metrics: "
          f"{cfg.workdir}/metrics.jsonl (TensorBoard: {cfg.workdir}/tb); "
          f"trained policy: {summary['policy']}"
          + (f" (Hugging Face: {summary['policy_hf']})"
             if summary.get("policy_hf") else ""))


if __name__ == "__main__":
  from poly_epo.cli import parse_flags
  sys.exit(app.run(main, flags_parser=parse_flags))
