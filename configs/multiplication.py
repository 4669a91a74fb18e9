"""Embedded `multiplication` task: base-policy pretraining (RL fields arrive with
the trainer).

    python -m poly_epo.pretrain --config configs/multiplication.py
"""

import ml_collections


def get_config():
  c = ml_collections.ConfigDict()
  c.seed = 0  # Every random choice flows from this.
  c.workdir = "runs/multiplication"  # Base policy goes to <workdir>/base.
  c.max_new_tokens = 48  # Completion cap: the longest decomposition + EOS.

  c.task = ml_collections.ConfigDict()
  c.task.name = "multiplication"  # A registered task (poly_epo.tasks).
  c.task.options = ml_collections.ConfigDict()  # Task constructor options.
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
