"""`python -m poly_epo.evaluate --config configs/<exp>.py --policy <dir>
[--policy <dir> ...] [--samples 256] [--prompts N] [--out <dir>]`: evaluate
saved policies (or `base`) on the task's held-out prompts, write eval.json
and the overlay plots, print the table. The library is
`poly_epo/evaluation.py`."""

from __future__ import annotations

import sys

from absl import app, logging

from poly_epo import evaluation, storage


def main(argv):
  del argv
  from absl import flags
  logging.set_verbosity(logging.WARNING)
  f = flags.FLAGS
  cfg = f.config
  if cfg is None:
    raise app.UsageError("--config=configs/<exp>.py is required")
  if not f.policy:
    raise app.UsageError("at least one --policy <dir> (or --policy base)")
  from poly_epo import tasks
  embedded = tasks.get(cfg.task.name, **dict(cfg.task.options)).embedded
  samples = f.samples if f.samples is not None else (
      256 if embedded else cfg.eval_samples)
  out = f.out or storage.join(cfg.workdir, "eval")
  try:
    result = evaluation.evaluate_policies(cfg, f.policy, samples=samples,
                               prompts=f.prompts or cfg.eval_prompts, out=out,
                               allow_task_mismatch=f.allow_task_mismatch)
  except (FileNotFoundError, ValueError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  print(evaluation.format_report(result))
  print(f"wrote {out}/eval.json and {out}/*.png")
  return 0


if __name__ == "__main__":
  from absl import flags
  from ml_collections import config_flags
  config_flags.DEFINE_config_file("config", None, "Experiment config file.",
                                  lock_config=True)
  flags.DEFINE_multi_string("policy", [], "policy folder (or 'base'); "
                            "repeat to overlay several")
  flags.DEFINE_integer("samples", None, "samples per prompt m >= 1 (default "
                       "256 for embedded tasks, else config.eval_samples)")
  flags.DEFINE_bool("allow_task_mismatch", False, "evaluate policies whose "
                    "metadata records another task or task options")
  flags.DEFINE_integer("prompts", 0, "held-out prompts (default "
                       "config.eval_prompts)")
  flags.DEFINE_string("out", "", "output folder (default <workdir>/eval)")
  from poly_epo.cli import parse_flags
  sys.exit(app.run(main, flags_parser=parse_flags))
