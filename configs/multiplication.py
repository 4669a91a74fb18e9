"""Poly-EPO on the embedded `multiplication` task (CPU).

    python -m poly_epo.train --config configs/multiplication.py

Field meanings: poly_epo/config_defaults.py.
"""

from poly_epo.config_defaults import base_config


def get_config():
  c = base_config()
  c.workdir = "runs/multiplication"
  c.task.name = "multiplication"
  c.task.options.mistake_rate = 0.3
  # The setting under which Poly-EPO best met the demo's claim over 3 seeds
  # on both tasks (docs/RESULTS.md, "The study of what matters"): a base
  # shaped like a pretrained LM and a gentler learning rate; the baselines
  # run with the same setting.
  c.task.options.corpus_skew = 1.5  # 0: the corpus draws strategies
  # uniformly; s > 0: Zipf-like, rank r with weight (r + 1)^-s (a dominant
  # strategy and rare others, like a pretrained LM's).
  c.lr = 1e-4  # (3e-4 narrowed every policy more in 120 steps.)
  c.rollout.engine = "static"  # 12-token responses that mostly end
  # together: lock-step chunks cost least (docs/ROLLOUT.md).
  c.max_prompt_tokens = 8
  c.max_new_tokens = 48
  c.prompts_per_step = 16
  return c
