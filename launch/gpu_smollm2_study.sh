#!/usr/bin/env bash
# The real-model experiment (Fig. 5 at small scale) on one GPU: Poly-EPO,
# GRPO and Dr.GRPO from SmolLM2-135M-Instruct on both chat tasks, 3 seeds,
# the same report as on CPU (runs/study_smollm2_<task>/study.md, plots).
# Sized for ~10 minutes on an H100/H200 (bf16 compute, f32 master weights;
# 8 prompts per step instead of the CPU config's 2). The device has no
# package index: carry the converted model folder
# (`python -m poly_epo.convert --out smollm2_hf` where gguf is installed).
# Untested on a GPU so far (no device was lent when it was written).
set -uo pipefail
cd "$(dirname "$0")/.."
HF=${HF:-smollm2_hf}
export PYTHONUNBUFFERED=1
for task in polynomial multiplication; do
  timeout ${T:-290} python -m poly_epo.study \
    --config configs/smollm2_$task.py --seeds 3 \
    --algorithms polyepo,grpo,drgrpo --out runs/study_smollm2_${task}_gpu \
    --config.base_policy="$HF" --config.model.dtype=bfloat16 \
    --config.prompts_per_step=8 --config.progress=False
done
