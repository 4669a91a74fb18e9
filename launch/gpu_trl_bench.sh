#!/usr/bin/env bash
# The paired RL-step benchmark against TRL on one GPU (README's TRL table),
# SmolLM2-135M-Instruct, 2 and 8 prompts per step, float32 weights and
# TensorFloat-32 matmuls on both sides (--tf32), TRL's whole batch in one
# pass (--trl-micro-seqs 0), within ~5 minutes on an H200.
#   HF=<the converted model folder> bash launch/gpu_trl_bench.sh
# The folder: `python -m poly_epo.convert --out DIR` (needs `gguf`). TRL
# needs `pip install -e '.[trl]'`; on a machine with no package index,
# install the wheels first (trl, datasets, dill, multiprocess). EXTRA adds
# --config.* flags to poly_epo's side. Logs go to $LOGS.
set -uo pipefail
cd "$(dirname "$0")/.."
LOGS=${LOGS:-runs/gpu_trl_bench}
HF=${HF:-smollm2_hf}
mkdir -p "$LOGS"
export PYTHONUNBUFFERED=1
for prompts in 2 8; do
  timeout ${T:-200} python3 -m poly_epo.bench trl \
    --config configs/smollm2_polynomial.py --prompts $prompts --steps 4 \
    --rounds 1 --policy "$HF" --tf32 --trl-micro-seqs 0 --json \
    ${EXTRA:-} 2>&1 | tee "$LOGS/trl_p$prompts.txt"
done
