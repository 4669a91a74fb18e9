"""The paper's recipe (DESIGN 3.3): Qwen3-4B-Base on POLARIS-53k with an LM
judge. Needs local paths (nothing is downloaded) and accelerators:

    python -m poly_epo.train --config configs/qwen3_4b_polaris.py \
        --config.base_policy=/ckpt/qwen3-4b-base-policy \
        --config.task.options.path=/data/polaris-53k.parquet \
        --config.judge.url=http://localhost:8000/v1 \
        --config.judge.model=Qwen3-4B-Instruct-2507 \
        --config.mesh.fsdp=8

`base_policy` is a `checkpointing.save_policy` folder; make one from a
Hugging Face folder with `poly_epo.models.load_hf` + `load_tokenizer` +
`save_policy`. Field meanings: poly_epo/config_defaults.py.
"""

from poly_epo.config_defaults import base_config


def get_config():
  c = base_config()
  c.workdir = "runs/qwen3_4b_polaris"
  c.task.name = "math"
  c.task.options.path = "/data/polaris-53k.parquet"
  c.task.options.heldout_path = ""  # E.g. AIME / MATH-500 (else a split).
  c.task.options.problem_field = "problem"
  c.task.options.answer_field = "answer"
  c.base_policy = "/ckpt/qwen3-4b-base-policy"
  c.algorithm = "polyepo"
  c.set_size = 4  # n = 4.
  c.num_samples = 8  # N = 8 (70 sets).
  c.prompts_per_step = 128  # 128 prompts per rollout batch...
  c.num_minibatches = 2  # ...in 2 minibatches of 64 (2 optimizer steps).
  c.num_microbatches = 16  # Accumulation to fit memory (tune per device).
  c.max_prompt_tokens = 1024
  c.max_new_tokens = 4096
  c.temperature = 1.0
  c.top_p = 1.0
  c.lr = 1e-6  # Constant.
  c.weight_decay = 0.01
  c.grad_clip = 0.3
  c.steps = 850
  c.judge.kind = "http"
  c.judge.url = "http://localhost:8000/v1"
  c.judge.model = "Qwen3-4B-Instruct-2507"
  c.eval_every = 50
  c.eval_prompts = 0  # Evaluate with poly_epo.evaluate on benchmarks instead.
  c.ckpt_every = 25
  c.mesh.fsdp = 8
  return c
