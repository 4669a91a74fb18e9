#!/usr/bin/env bash
# One host with one or more NVIDIA GPUs. Usage:
#   bash launch/gpu.sh configs/qwen3_4b_polaris.py --config.mesh.fsdp=8 ...
# Installs the CUDA build of jaxlib into .venv, then runs the trainer; every
# visible GPU joins the mesh (config.mesh.data=0 takes the rest).
set -euo pipefail
config=${1:?usage: launch/gpu.sh configs/<exp>.py [--config.field=value ...]}
shift
cd "$(dirname "$0")/.."
python3 -m venv .venv && . .venv/bin/activate
pip install -q -e . "jax[cuda12]"
exec python -m poly_epo.train --config "$config" "$@"
