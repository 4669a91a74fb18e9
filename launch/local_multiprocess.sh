#!/usr/bin/env bash
# Multi-host on one CPU machine (what tests/test_multihost.py does): N
# processes with D forced CPU devices each, joined through jax.distributed.
#   bash launch/local_multiprocess.sh 2 2 configs/polynomial.py --config.steps=3
set -euo pipefail
nproc=${1:?processes}; ndev=${2:?devices per process}; config=${3:?config}
shift 3
cd "$(dirname "$0")/.."
port=$((20000 + RANDOM % 20000))
pids=()
for i in $(seq 0 $((nproc - 1))); do
  JAX_PLATFORMS=cpu XLA_FLAGS=--xla_force_host_platform_device_count=$ndev \
    python -m poly_epo.train --config "$config" --config.distributed=True \
      --config.coordinator_address=127.0.0.1:$port \
      --config.num_processes="$nproc" --config.process_id="$i" "$@" &
  pids+=($!)
done
status=0
for p in "${pids[@]}"; do wait "$p" || status=$?; done
exit $status
