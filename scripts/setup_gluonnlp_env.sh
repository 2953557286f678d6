#!/usr/bin/env bash
# Creates the separate virtual environment with MXNet 1.9.1 and GluonNLP 0.10.0 that the GluonNLP converter's tests
# (and anyone who wants to run GluonNLP models) use. It lives apart from the main environment because mxnet 1.9.1
# only imports with numpy < 1.24 while the main stack pins numpy 2.x.
# Idempotent: a complete environment (marked by a stamp file written last) is left as it is; pip's cache keeps the
# gluonnlp wheel it builds, so a re-creation takes seconds of download-free install.
#
# Usage: scripts/setup_gluonnlp_env.sh [--venv DIR] [--python PY] [--force] [--help]
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
VENV="${BORT_GLUONNLP_VENV:-$ROOT/.venv-gluonnlp}"
BASE_PYTHON="${PYTHON:-python3}"
FORCE=0
# Exact pins of everything installed (resolved once with pip on Python 3.11; mxnet's own requirements are
# numpy<2,>=1.17, requests, graphviz<0.9; gluonnlp builds a Cython extension and needs numpy, cython, packaging).
PINS=(mxnet==1.9.1 gluonnlp==0.10.0 numpy==1.23.5 cython==3.3.1 packaging==26.3 graphviz==0.8.4
      requests==2.34.2 certifi==2026.10.18 charset-normalizer==3.5.2 idna==3.20 urllib3==2.8.0)
BUILD_PINS=(numpy==1.23.5 cython==3.3.1 setuptools==65.5.0 wheel==0.45.1)

usage() {
    cat <<EOF
Usage: $0 [options]

Creates a virtual environment with ${PINS[*]:0:3} (plus their pinned dependencies)
for converting and checking GluonNLP 0.x checkpoints. Prints the environment's python on success.

Options:
  --venv DIR     where to create it (default: \$BORT_GLUONNLP_VENV or <project root>/.venv-gluonnlp)
  --python PY    base interpreter for 'python -m venv' (default: \$PYTHON or python3; mxnet 1.9.1 wheels are
                 py3-none-manylinux2014_x86_64, tested with Python 3.11)
  --force        delete and re-create the environment
  -h, --help     show this help

Exit status: 0 on success, 2 on a usage error, 1 when creation or installation fails.
EOF
}

die() { echo "setup_gluonnlp_env.sh: error: $*" >&2; exit 1; }
log() { echo "setup_gluonnlp_env.sh: $*" >&2; }

while [[ $# -gt 0 ]]; do
    case "$1" in
        --venv) [[ $# -ge 2 && -n "$2" ]] || { echo "setup_gluonnlp_env.sh: --venv needs a folder" >&2; exit 2; }
                VENV="$2"; shift 2 ;;
        --python) [[ $# -ge 2 && -n "$2" ]] || { echo "setup_gluonnlp_env.sh: --python needs an interpreter" >&2; exit 2; }
                  BASE_PYTHON="$2"; shift 2 ;;
        --force) FORCE=1; shift ;;
        -h|--help) usage; exit 0 ;;
        *) echo "setup_gluonnlp_env.sh: unknown option '$1' (see --help)" >&2; exit 2 ;;
    esac
done

STAMP="$VENV/.bort-gluonnlp-ready"
WANT="${PINS[*]} ${BUILD_PINS[*]}"
check() { OMP_NUM_THREADS=1 "$VENV/bin/python" -c "import mxnet, gluonnlp, numpy; assert mxnet.__version__ == '1.9.1' and gluonnlp.__version__ == '0.10.0'" 2>/dev/null; }

if [[ $FORCE -eq 0 && -f "$STAMP" && "$(cat "$STAMP")" == "$WANT" ]] && check; then
    log "environment ready: $VENV"
    echo "$VENV/bin/python"
    exit 0
fi

command -v "$BASE_PYTHON" >/dev/null || die "interpreter '$BASE_PYTHON' not found (use --python)"
"$BASE_PYTHON" -c 'import venv, ensurepip' 2>/dev/null || die "'$BASE_PYTHON' lacks venv/ensurepip (on Debian: apt-get install python3-venv)"
command -v cc >/dev/null || command -v gcc >/dev/null || die "no C compiler: gluonnlp 0.10.0 builds a Cython extension (apt-get install gcc)"

if [[ -e "$VENV" ]]; then
    # Only ever delete a folder that this script created (it has a pyvenv.cfg), never an arbitrary path.
    [[ -f "$VENV/pyvenv.cfg" ]] || die "$VENV exists and is not a virtual environment: refusing to replace it"
    log "removing the incomplete or outdated environment $VENV"
    rm -rf "$VENV"
fi

log "creating $VENV with $("$BASE_PYTHON" --version 2>&1)"
"$BASE_PYTHON" -m venv "$VENV" || die "python -m venv $VENV failed"
# Build requirements first: gluonnlp 0.10.0 is a source distribution (setup.py, no pyproject.toml) whose Cython
# extension is compiled against numpy; building without isolation uses exactly the pinned numpy and cython.
"$VENV/bin/python" -m pip install -q --disable-pip-version-check "${BUILD_PINS[@]}" \
    || die "installing the build requirements ${BUILD_PINS[*]} into $VENV failed"
"$VENV/bin/python" -m pip install -q --disable-pip-version-check --no-build-isolation "${PINS[@]}" \
    || die "installing ${PINS[*]:0:3} into $VENV failed"
check || die "the new environment cannot import mxnet 1.9.1 and gluonnlp 0.10.0 (see: $VENV/bin/python -c 'import mxnet, gluonnlp')"
echo "$WANT" > "$STAMP"
log "environment ready: $VENV"
echo "$VENV/bin/python"
