#!/usr/bin/env bash
# Pre-training distillation launcher. Usage:
#   ./run_pretraining_distillation.sh [OPTIONS]             # one process (CPU or one GPU)
#   NPROC=8 ./run_pretraining_distillation.sh [OPTIONS]     # torchrun with 8 processes on this machine
#   ENGINE=horovod NPROC=8 ./run_pretraining_distillation.sh [OPTIONS]   # horovodrun with 8 processes
# OPTIONS are those of `python bort/run_pretraining_distillation.py --help`.
set -euo pipefail
cd "$(dirname "$0")"
NPROC="${NPROC:-1}"
ENGINE="${ENGINE:-torchrun}"
if [ "$NPROC" -le 1 ]; then
  exec python bort/run_pretraining_distillation.py "$@"
elif [ "$ENGINE" = horovod ]; then
  exec horovodrun -np "$NPROC" python bort/run_pretraining_distillation.py --engine horovod "$@"
else
  exec torchrun --standalone --nproc_per_node "$NPROC" bort/run_pretraining_distillation.py --engine torchrun "$@"
fi
