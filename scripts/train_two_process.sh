#!/usr/bin/env bash
# Data-parallel training with two CPU processes (gloo), e.g. to check a multi-process setup without GPUs:
#   scripts/train_two_process.sh configs/shapes_t2v_tiny.yaml train.max_steps=20
# Each process uses one thread; the global batch is data.batch_size x 2. On GPUs use
#   accelerate launch --num_processes N -m vidiff.cli_train CONFIG [overrides]
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PY:-.venv/bin/python}"
if [ "$#" -lt 1 ]; then
    echo "usage: $0 CONFIG.yaml [key.path=value ...]" >&2
    exit 2
fi
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
exec "$PY" -m torch.distributed.run --standalone --nnodes 1 --nproc_per_node 2 -m vidiff.cli_train "$@" train.threads=1
