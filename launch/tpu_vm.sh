#!/usr/bin/env bash
# A TPU VM pod slice: the same command on every worker, joined through
# jax.distributed (config.distributed=True). Usage:
#   TPU_NAME=my-v5e-32 ZONE=us-west4-a bash launch/tpu_vm.sh \
#       configs/qwen3_4b_polaris.py --config.mesh.fsdp=32
# The repository must already be at ~/poly_epo on every worker
# (e.g. gcloud compute tpus tpu-vm scp --worker=all --recurse).
set -euo pipefail
config=${1:?usage: launch/tpu_vm.sh configs/<exp>.py [--config.field=value ...]}
shift
: "${TPU_NAME:?set TPU_NAME}" "${ZONE:?set ZONE}"
gcloud compute tpus tpu-vm ssh "$TPU_NAME" --zone "$ZONE" --worker=all \
  --command "cd ~/poly_epo && python3 -m venv .venv && . .venv/bin/activate \
    && pip install -q -e . 'jax[tpu]' \
    && python -m poly_epo.train --config $config --config.distributed=True $*"
