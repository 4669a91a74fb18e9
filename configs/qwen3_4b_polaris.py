"""The paper's recipe (DESIGN 3.3): Qwen3-4B-Base on POLARIS-53k with an LM
judge. Needs local paths (nothing is downloaded) and accelerators:

    python -m poly_epo.train --config configs/qwen3_4b_polaris.py \
        --config.base_policy=/ckpt/qwen3-4b-base-policy \
        --config.task.options.path=/data/polaris-53k.parquet \
        --config.judge.url=http://localhost:8000/v1 \
        --config.judge.model=Qwen3-4B-Instruct-2507

`base_policy` is a Hugging Face folder (config.json + safetensors +
tokenizer) or a `checkpointing.save_policy` folder; either is loaded straight
onto the mesh. Check memory first, without weights or accelerators:

    python -m poly_epo.plan --config configs/qwen3_4b_polaris.py --chip h100
    python -m poly_epo.plan --config configs/qwen3_4b_polaris.py --chip v5p \
        --devices 64   # the TPU compiler (pip install -e ".[tpu]")

Field meanings: poly_epo/config_defaults.py.
"""

import ml_collections

from poly_epo.config_defaults import base_config


def get_config():
  c = base_config()
  c.workdir = "runs/qwen3_4b_polaris"
  c.task.name = "math"
  c.task.options.path = "/data/polaris-53k.parquet"
  c.task.options.heldout_path = ""  # One held-out file (else a split)...
  c.task.options.heldout_fraction = 0.0  # ...of this share; 0: all train.
  c.task.options.workers = 0  # Answer-checking processes (0 = CPU count).
  c.task.options.answer_timeout = 5.0  # Hard deadline per answer (seconds).
  c.task.options.problem_field = "problem"
  c.task.options.answer_field = "answer"
  c.task.options.chat_template = "auto"  # One user turn, as the authors do.
  # The authors' validation sets (verl Parquet files you downloaded), each
  # evaluated on its own every eval_every steps; empty paths are skipped.
  c.task.options.eval_sets = ml_collections.ConfigDict({
      "math500": "", "aime25": "", "beyondaime": "", "minerva": ""})
  c.base_policy = "/ckpt/qwen3-4b-base-policy"
  c.model.preset = "qwen3-4b"  # Shapes for poly_epo.plan without weights.
  c.model.param_dtype = "float32"  # f32 master weights and AdamW state...
  c.model.dtype = "bfloat16"  # ...bf16 sampler, KV cache and loss forward.
  c.model.remat = "full"  # Keep only each layer's input for the backward.
  c.model.attention = "xla"  # jax.nn.dot_product_attention ("cudnn" on GPU).
  c.model.attention_chunk = 512  # [rows, 32, 512, 5120] scores at a time.
  c.model.logprob_chunk = 512  # [S, 512, 151936] f32 logits at a time.
  c.recompute_old_logprobs = "auto"  # On (bf16 compute), as verl does.
  c.rollout.chunk_prompts = 0  # Derived: the most prompts whose KV cache
  # (x 8 rows x 5,120 positions) fits (64 on 8 v5p / H100 chips).
  c.rollout.engine = "continuous"  # Long ragged responses: decode slots
  c.rollout.slots = 0  # (= chunk x 8 rows) refilled from the whole batch;
  # on TPU a slot per row, pages in the chunk's KV memory (below).
  c.rollout.attention = "auto"  # The Pallas decode kernel on GPU (each row
  # reads its own fill), the Pallas TPU paged kernel on TPU.
  c.rollout.cache = "auto"  # Paged on TPU (pages follow the tokens decoded,
  # a prompt's KV shared by its 8 samples), contiguous elsewhere.
  c.packing = True  # Sequences packed end to end for the update.
  c.algorithm = "polyepo"
  c.set_size = 4  # n = 4.
  c.num_samples = 8  # N = 8 (70 sets).
  c.prompts_per_step = 128  # 128 prompts per rollout batch...
  c.num_minibatches = 2  # ...in 2 minibatches of 64 (2 optimizer steps).
  c.num_microbatches = 0  # Derived from the devices and their memory;
  # `python -m poly_epo.plan` shows the choice and what the compiler needs.
  c.max_prompt_tokens = 1024
  c.max_new_tokens = 4096
  c.temperature = 1.0
  c.top_p = 1.0
  c.lr = 1e-6  # Constant.
  c.weight_decay = 0.01
  c.grad_clip = 0.3
  c.loss.eps_low, c.loss.eps_high = 0.2, 0.28  # Poly-EPO's clip...
  c.loss_overrides.drgrpo = ml_collections.ConfigDict({"eps_high": 0.2})
  c.loss_overrides.grpo = ml_collections.ConfigDict({"eps_high": 0.2})
  # ...and the authors' symmetric 0.2 / 0.2 for their Dr.GRPO baseline.
  c.steps = 850
  c.judge.kind = "http"
  c.judge.url = "http://localhost:8000/v1"
  c.judge.model = "Qwen3-4B-Instruct-2507"
  c.eval_every = 50
  c.eval_prompts = 0  # Every problem of each eval set...
  c.eval_samples = 16  # ...16 samples each at temperature 1.0 (the authors').
  c.ckpt_every = 25
  c.mesh.fsdp = 0  # Every device in FSDP: the same file runs on 8 or 64
  # chips (0 = derive; see poly_epo/autoscale.py).
  return c
