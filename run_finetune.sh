#!/usr/bin/env bash
# Fine-tune on GLUE/SuperGLUE/RACE: ./run_finetune.sh TASK [TASK ...] [options]; see --help.
# One torch thread per process unless OMP_NUM_THREADS says otherwise (CPU machines are often shared).
set -euo pipefail
cd "$(dirname "$0")"
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
exec python finetune/run_finetune.py "$@"
