#!/usr/bin/env bash
# Runs `cxrjax train` on every worker of a Cloud TPU VM (single- or multi-host slice).
#
#   launch/tpu_vm.sh TPU_NAME ZONE CONFIG WORKDIR [--config.x=y ...]
#   launch/tpu_vm.sh my-v4-32 us-central2-b configs/iu_xray_attention.py:split=r2gen,tpu gs://bucket/iu \
#       --config.data.data_dir=gs://bucket/data --config.init.encoder=/home/$USER/weights/chexnet
#
# Each worker clones this repository at the commit checked out here (REPO defaults to its origin), installs
# JAX for TPU and cxrjax into a venv, and runs the same command; JAX forms one mesh over all hosts.
set -euo pipefail
if [ $# -lt 4 ]; then
  sed -n '2,10p' "$0"; exit 2
fi
tpu=$1; zone=$2; config=$3; workdir=$4; shift 4
repo=${REPO:-$(git config --get remote.origin.url)}
commit=$(git rev-parse HEAD)
overrides=$(printf ' %q' "$@")
gcloud compute tpus tpu-vm ssh "$tpu" --zone="$zone" --worker=all --command="
  set -e
  [ -d cxrjax ] || git clone '$repo' cxrjax
  cd cxrjax && git fetch -q origin && git checkout -q '$commit'
  [ -d .venv ] || python3 -m venv .venv
  . .venv/bin/activate
  pip install -q 'jax[tpu]==0.10.2' && pip install -q -e .
  cxrjax train --config='$config' --workdir='$workdir' $overrides"
