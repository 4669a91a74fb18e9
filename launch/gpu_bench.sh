#!/usr/bin/env bash
# The GPU speed checks on a random-initialised Qwen3-0.6B-shaped model in
# bf16: the decode-attention kernels compiled for the GPU against their
# references, the rollout engines on long ragged responses (with the Pallas
# decode kernel) against the HBM roofline, the sampler against
# transformers' generate, and the update's tokens/s, MFU and peak memory.
# Needs JAX (CUDA), PyTorch, transformers, pytest. Logs go to $LOGS (default
# runs/gpu_bench).
set -uo pipefail
cd "$(dirname "$0")/.."
LOGS=${LOGS:-runs/gpu_bench}
mkdir -p "$LOGS"
export XLA_PYTHON_CLIENT_MEM_FRACTION=${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.9}
export PYTHONUNBUFFERED=1
python -c "import jax, flax, torch, transformers; print('jax', jax.__version__, \
'flax', flax.__version__, 'torch', torch.__version__, 'transformers', \
transformers.__version__, jax.devices()[0].device_kind)" | tee "$LOGS/env.txt"
# (0) Kernels and engines on the GPU (f32 at full matmul precision: TF32
# would move the references by ~1e-4).
JAX_PLATFORMS=cuda XLA_FLAGS= JAX_DEFAULT_MATMUL_PRECISION=highest \
  timeout ${T0:-600} python -m pytest -q -p no:cacheprovider \
  tests/test_engine_kernels.py tests/test_engine_loop.py \
  -k "not mesh and not pod" 2>&1 | tee "$LOGS/tests.txt"
# (d) Rollout engines, 32 prompts x 8 samples, responses forced uniform on
# [19, 384], 64 decode slots: static vs continuous vs the Pallas kernel.
timeout ${T1:-600} python -m poly_epo.bench rollout --preset qwen3-0.6b \
  --dtype bfloat16 --lengths uniform --repeats 1 --kernel \
  2>&1 | tee "$LOGS/rollout.txt"
# (a) 256 sequences x 512 new tokens, against transformers in the same run.
timeout ${T2:-900} python -m poly_epo.bench sampler --preset qwen3-0.6b \
  --dtype bfloat16 --batch 32 --samples 8 --prompt-len 64 --new-tokens 512 \
  --repeats 3 --torch 2>&1 | tee "$LOGS/sampler.txt"
# (b, c) update with remat: tokens/s, MFU, peak memory.
timeout ${T3:-600} python -m poly_epo.bench train --preset qwen3-0.6b \
  --dtype bfloat16 --remat full --attention cudnn --seqs 64 --prompt-len 256 \
  --new-tokens 768 --micro 4 --logprob-chunk 256 --repeats 3 \
  2>&1 | tee "$LOGS/train.txt"
