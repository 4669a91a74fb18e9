#!/usr/bin/env bash
# Several GPU hosts, one process per host, joined through jax.distributed.
# Run the same command on every host (e.g. from SLURM's srun, where
# jax.distributed auto-detects everything and the three variables below can
# stay unset), or set them by hand:
#   COORDINATOR=host0:12345 NUM_NODES=2 NODE_RANK=0 \
#     bash launch/gpu_multinode.sh configs/qwen3_4b_polaris.py
# Install once, before launching on the nodes (not per node: on a shared
# filesystem the nodes would race to build the same environment):
#   INSTALL_ONLY=1 bash launch/gpu_multinode.sh configs/qwen3_4b_polaris.py
# The environment is .venv-gpu (never the quick start's CPU .venv), and the
# run refuses to start unless JAX's backend is the GPU. The workdir must be
# on storage every host sees (a shared filesystem or gs://): a start-up
# check refuses one that is not. SIGTERM (scancel, pre-emption) makes the
# run checkpoint and exit; the same command resumes it.
set -euo pipefail
config=${1:?usage: launch/gpu_multinode.sh configs/<exp>.py [--config.field=value ...]}
shift
cd "$(dirname "$0")/.."
venv=${VENV:-.venv-gpu}
if [ "${INSTALL_ONLY:-0}" = 1 ]; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q -e ".[math,gcs]" "jax[cuda12]"
  "$venv/bin/python" -m poly_epo.plan --config "$config" --chip "${CHIP:-h100}" \
    ${DEVICES:+--devices "$DEVICES"} "$@" || true
  exit 0
fi
[ -x "$venv/bin/python" ] || {
  echo "no $venv: run INSTALL_ONLY=1 bash $0 $config once first" >&2; exit 2; }
backend=$("$venv/bin/python" -c "import jax; print(jax.default_backend())")
[ "$backend" = gpu ] || {
  echo "JAX in $venv runs on '$backend', not the GPU: reinstall it with" \
       "INSTALL_ONLY=1 (jax[cuda12])" >&2; exit 2; }
export XLA_PYTHON_CLIENT_MEM_FRACTION=${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.95}
dist=(--config.distributed=True)
if [ -n "${COORDINATOR:-}" ]; then
  dist+=(--config.coordinator_address="$COORDINATOR"
         --config.num_processes="${NUM_NODES:?set NUM_NODES}"
         --config.process_id="${NODE_RANK:?set NODE_RANK}")
fi
exec "$venv/bin/python" -m poly_epo.train --config "$config" "${dist[@]}" "$@"
