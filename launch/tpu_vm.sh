#!/usr/bin/env bash
# A TPU VM pod slice: the same training command on every worker, joined
# through jax.distributed (config.distributed=True; the TPU runtime supplies
# the coordinator). Usage, from any machine with gcloud:
#
#   TPU_NAME=my-v5p-64 ZONE=us-east5-a WORKDIR=gs://my-bucket/runs/qwen3 \
#     bash launch/tpu_vm.sh configs/qwen3_4b_polaris.py \
#       --config.base_policy=gs://my-bucket/ckpt/Qwen3-4B-Base \
#       --config.task.options.path=gs://my-bucket/data/polaris-53k.parquet
#
# 1. Prints the plan for the slice (the TPU compiler, on this machine, when
#    the tpu extra is installed here; skip with PLAN=0).
# 2. Copies this repository to ~/poly_epo on every worker and, once per
#    worker (a marker file remembers it), makes a Python 3.12 environment
#    with uv (TPU VM images ship Python 3.10; this package needs >= 3.11)
#    and installs the package with its tpu, math and gcs extras.
# 3. Starts the run detached (nohup) on every worker, each logging to
#    ~/poly_epo/train.<worker>.log; the ssh session may end.
#
# WORKDIR must be gs://... (or a path on storage every worker mounts: set
# SHARED_MOUNT=1): checkpoints are written by all workers together, and a
# start-up check refuses a workdir that the workers do not all see. Follow a
# run:  gcloud compute tpus tpu-vm ssh $TPU_NAME --zone $ZONE --worker=0 \
#         --command 'tail -f ~/poly_epo/train.0.log'
# Stop it cleanly (a checkpoint, then exit; the same command resumes):
#       ... --worker=all --command 'pkill -TERM -f poly_epo.train'
set -euo pipefail
config=${1:?usage: launch/tpu_vm.sh configs/<exp>.py [--config.field=value ...]}
shift
: "${TPU_NAME:?set TPU_NAME}" "${ZONE:?set ZONE}" "${WORKDIR:?set WORKDIR (gs://...)}"
case "$WORKDIR" in
  gs://*) ;;
  *) [ "${SHARED_MOUNT:-0}" = 1 ] || {
       echo "WORKDIR=$WORKDIR is not gs://: every worker must see it; set" \
            "SHARED_MOUNT=1 if it is a shared mount (NFS, Filestore)" >&2
       exit 2; } ;;
esac
cd "$(dirname "$0")/.."
if [ "${PLAN:-1}" = 1 ] && python3 -c "import poly_epo" 2>/dev/null; then
  python3 -m poly_epo.plan --config "$config" --chip "${CHIP:-v5p}" \
    ${DEVICES:+--devices "$DEVICES"} "$@" || true
fi
ssh_all() {
  gcloud compute tpus tpu-vm ssh "$TPU_NAME" --zone "$ZONE" --worker=all \
    --command "$1"
}
ssh_all 'mkdir -p ~/poly_epo'
gcloud compute tpus tpu-vm scp --zone "$ZONE" --worker=all --recurse \
  ./poly_epo ./configs ./setup.py ./README.md "$TPU_NAME":~/poly_epo/
# Quote every argument once for the remote shell.
args=$(printf ' %q' --config "$config" --config.distributed=True \
       --config.workdir="$WORKDIR" "$@")
ssh_all 'set -e; cd ~/poly_epo
  if [ ! -f .installed ]; then
    command -v uv >/dev/null || curl -LsSf https://astral.sh/uv/install.sh | sh
    export PATH=$HOME/.local/bin:$PATH
    uv venv --python 3.12 .venv
    uv pip install --python .venv/bin/python -e ".[tpu,math,gcs]"
    touch .installed
  fi
  w=$(python3 -c "import socket; print(socket.gethostname().rsplit(\"-w-\", 1)[-1])" 2>/dev/null || echo 0)
  nohup .venv/bin/python -m poly_epo.train'"$args"' > train.$w.log 2>&1 < /dev/null &
  echo "worker $w started: ~/poly_epo/train.$w.log"'
