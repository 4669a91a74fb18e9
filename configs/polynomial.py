"""Embedded `polynomial` task: base-policy pretraining (RL fields arrive with
the trainer).

    python -m poly_epo.pretrain --config configs/polynomial.py
"""

import ml_collections


def get_config():
  c = ml_collections.ConfigDict()
  c.seed = 0  # Every random choice flows from this.
  c.workdir = "runs/polynomial"  # Base policy goes to <workdir>/base.
  c.max_new_tokens = 12  # Completion cap: "(-12,345)" + EOS fits.

  c.task = ml_collections.ConfigDict()
  c.task.name = "polynomial"  # A registered task (poly_epo.tasks).
  c.task.options = ml_collections.ConfigDict()  # Task constructor options.
  c.task.options.max_abs_x = 6  # x ranges lie within [-6, 6].
  c.task.options.mistake_rate = 0.3  # Share of wrong corpus answers.

  c.model = ml_collections.ConfigDict()
  c.model.preset = "tiny"  # Model preset; vocab comes from the tokenizer.

  c.pretrain = ml_collections.ConfigDict()
  c.pretrain.steps = 800  # Optimizer steps (one fresh batch each).
  c.pretrain.batch_size = 128  # Corpus examples per step.
  c.pretrain.lr = 3e-3  # Peak AdamW lr (warmup, cosine to 10%).
  c.pretrain.weight_decay = 0.01  # AdamW weight decay.
  c.pretrain.eval_prompts = 64  # Held-out prompts evaluated at the end.
  c.pretrain.eval_samples = 32  # m samples per held-out prompt.
  return c
