#!/usr/bin/env bash
# Sets up everything the test suite needs on a fresh machine, then runs it. Usage: ./run_tests.sh [pytest args]
set -euo pipefail
cd "$(dirname "$0")"
python -m pip install -q -r requirements.txt -r requirements-dev.txt
# Horovod 0.28.1 built against the installed torch (cached wheel after the first build, ~2.5 min on 2 cores).
bash scripts/build_horovod.sh
# MXNet 1.9.1 + GluonNLP 0.10.0 in their own environment (.venv-gluonnlp/), for the GluonNLP converter's tests.
bash scripts/setup_gluonnlp_env.sh > /dev/null
# PostgreSQL server programs for the multi-worker search tests (Debian's package, installed where missing)
bash scripts/setup_postgres.sh > /dev/null || echo "warning: PostgreSQL cannot be installed here: its tests will be skipped" >&2
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
# tests read local files only; never reach for the hub
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1
python -m pytest "$@"
