#!/usr/bin/env bash
# The GPU speed checks (issue: sampler vs transformers' generate, decode vs
# its memory roofline, train-step MFU, peak memory) on a random-initialised
# Qwen3-0.6B-shaped model in bf16. Needs JAX (CUDA), PyTorch, transformers.
set -euo pipefail
cd "$(dirname "$0")/.."
export XLA_PYTHON_CLIENT_MEM_FRACTION=${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.9}
python -c "import jax, flax, torch, transformers; print('jax', jax.__version__, \
'flax', flax.__version__, 'torch', torch.__version__, 'transformers', \
transformers.__version__, jax.devices()[0].device_kind)"
# (a) 256 sequences x 512 new tokens, against transformers in the same run.
python -m poly_epo.bench sampler --preset qwen3-0.6b --dtype bfloat16 \
  --batch 32 --samples 8 --prompt-len 64 --new-tokens 512 --repeats 3 --torch
# (b, c) update with remat: tokens/s, MFU, peak memory.
python -m poly_epo.bench train --preset qwen3-0.6b --dtype bfloat16 \
  --remat full --attention cudnn --seqs 64 --prompt-len 256 \
  --new-tokens 768 --micro 4 --logprob-chunk 256 --repeats 3
