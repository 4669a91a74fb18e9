#!/usr/bin/env bash
# Several GPU hosts, one process per host, joined through jax.distributed.
# Run the same command on every host (e.g. from SLURM's srun, where
# jax.distributed auto-detects everything and the three variables below can
# stay unset), or set them by hand:
#   COORDINATOR=host0:12345 NUM_NODES=2 NODE_RANK=0 \
#     bash launch/gpu_multinode.sh configs/qwen3_4b_polaris.py --config.mesh.fsdp=16
# The workdir must be on a filesystem every host sees (checkpoints are
# written collectively; only process 0 writes metrics and exports).
set -euo pipefail
config=${1:?usage: launch/gpu_multinode.sh configs/<exp>.py [--config.field=value ...]}
shift
cd "$(dirname "$0")/.."
[ -d .venv ] || { python3 -m venv .venv && . .venv/bin/activate && \
  pip install -q -e ".[math]" "jax[cuda12]"; }
. .venv/bin/activate
export XLA_PYTHON_CLIENT_MEM_FRACTION=${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.95}
dist=(--config.distributed=True)
if [ -n "${COORDINATOR:-}" ]; then
  dist+=(--config.coordinator_address="$COORDINATOR"
         --config.num_processes="${NUM_NODES:?set NUM_NODES}"
         --config.process_id="${NODE_RANK:?set NODE_RANK}")
fi
exec python -m poly_epo.train --config "$config" "${dist[@]}" "$@"
