"""Sampler + set-advantage demo on a random-init tiny policy (CPU, seconds).

    python -m poly_epo.train --config configs/demo.py --config.num_samples=16

Until the trainer lands this is what `poly_epo.train` runs: it samples k
completions per prompt with the jitted KV-cache generator, scores them with a
toy reward and toy strategy labels, and prints Poly-EPO's marginal set
advantages beside Dr.GRPO's.
"""

import ml_collections


def get_config():
  c = ml_collections.ConfigDict()
  c.mode = "demo"  # What poly_epo.train runs ("demo" until the trainer lands).
  c.seed = 0  # Every random choice (init, sampling) flows from this.
  c.model = "tiny"  # Model preset (poly_epo.models.PRESETS).
  c.num_prompts = 32  # B prompts per batch.
  c.num_samples = 8  # N completions per prompt.
  c.max_new_tokens = 24  # L, completion length cap.
  c.temperature = 1.0  # Sampling temperature (0 = greedy).
  c.top_p = 1.0  # Nucleus sampling (1.0 = off).
  c.top_k = 0  # Top-k sampling (0 = off).
  c.set_size = 4  # n, the set size of the set objective.
  c.algorithm = "polyepo"  # Advantage estimator shown beside drgrpo.
  c.workdir = "runs/demo"  # Where samples.jsonl is written.
  return c
