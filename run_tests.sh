#!/usr/bin/env bash
# Sets up everything the test suite needs on a fresh machine, then runs it. Usage: ./run_tests.sh [pytest args]
set -euo pipefail
cd "$(dirname "$0")"
python -m pip install -q -r requirements.txt -r requirements-dev.txt
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
# tests read local files only; never reach for the hub
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1
python -m pytest "$@"
