#!/usr/bin/env bash
# A TPU VM pod slice: the same command on every worker, joined through
# jax.distributed (config.distributed=True; the TPU runtime supplies the
# coordinator). Usage:
#   TPU_NAME=my-v5p-16 ZONE=us-east5-a bash launch/tpu_vm.sh \
#       configs/qwen3_4b_polaris.py --config.mesh.fsdp=8
# The repository must already be at ~/poly_epo on every worker
# (gcloud compute tpus tpu-vm scp --worker=all --recurse), and the workdir
# on storage every worker sees (a GCS bucket mounted with gcsfuse, or NFS):
# Orbax checkpoints are written by all workers together, metrics, summaries
# and the Hugging Face export by worker 0 only. Check memory first, on any
# machine: python -m poly_epo.plan --config <exp> --chip v5p --devices 8
set -euo pipefail
config=${1:?usage: launch/tpu_vm.sh configs/<exp>.py [--config.field=value ...]}
shift
: "${TPU_NAME:?set TPU_NAME}" "${ZONE:?set ZONE}"
gcloud compute tpus tpu-vm ssh "$TPU_NAME" --zone "$ZONE" --worker=all \
  --command "cd ~/poly_epo && python3 -m venv .venv && . .venv/bin/activate \
    && pip install -q -e '.[math]' 'jax[tpu]' \
    && python -m poly_epo.train --config $config --config.distributed=True $*"
