#!/usr/bin/env bash
# One host with one or more NVIDIA GPUs. Usage:
#   bash launch/gpu.sh configs/qwen3_4b_polaris.py --config.mesh.fsdp=8 ...
# Installs the CUDA build of jaxlib into .venv, checks the memory plan, then
# runs the trainer; every visible GPU joins the mesh (config.mesh.data=0
# takes the rest).
set -euo pipefail
config=${1:?usage: launch/gpu.sh configs/<exp>.py [--config.field=value ...]}
shift
cd "$(dirname "$0")/.."
python3 -m venv .venv && . .venv/bin/activate
pip install -q -e ".[math]" "jax[cuda12]"
# Let JAX use most of the card (the default preallocates 75%).
export XLA_PYTHON_CLIENT_MEM_FRACTION=${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.95}
ngpu=$(python -c "import jax; print(jax.device_count())")
python -m poly_epo.plan --config "$config" --devices "$ngpu" --chip h100 "$@"
exec python -m poly_epo.train --config "$config" "$@"
