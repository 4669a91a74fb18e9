#!/usr/bin/env bash
# The real-model experiment (Fig. 5 at small scale) on one GPU: Poly-EPO,
# GRPO and Dr.GRPO from SmolLM2-135M-Instruct, 3 seeds, the same report as
# on CPU (runs/study_smollm2_<task>_gpu/study.md, study.json, plots/):
# bf16 compute, f32 master weights, 8 prompts per step (the CPU configs
# take 2). `study` resumes where it stopped: rerun to finish.
#   HF=<the converted model folder> bash launch/gpu_smollm2_study.sh
# The folder: `python -m poly_epo.convert --out DIR` (needs `gguf`).
# TASKS picks the tasks (default both), T bounds each task's seconds,
# EXTRA adds --config.* flags.
set -uo pipefail
cd "$(dirname "$0")/.."
HF=${HF:-smollm2_hf}
export PYTHONUNBUFFERED=1
for task in ${TASKS:-polynomial multiplication}; do
  timeout ${T:-600} python3 -m poly_epo.study \
    --config configs/smollm2_$task.py --seeds ${SEEDS:-3} \
    --algorithms polyepo,grpo,drgrpo --out runs/study_smollm2_${task}_gpu \
    --config.base_policy="$HF" --config.model.dtype=bfloat16 \
    --config.prompts_per_step=8 --config.progress=False ${EXTRA:-}
done
