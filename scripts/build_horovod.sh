#!/usr/bin/env bash
# Builds Horovod 0.28.1 with its PyTorch extension against the installed torch, caches the wheel per torch and
# Python version, and installs it. A second call reuses the cached wheel (seconds); a call that finds the right
# build already installed does nothing.
#
# Why: Horovod 0.28.1 (the last release on PyPI) requests C++14 in its top-level CMakeLists.txt and in
# horovod/torch/CMakeLists.txt, while torch >= 2.1 headers need C++17, so `pip install horovod` fails to compile.
# This script patches exactly those two lines to C++17 and builds from the PyPI source distribution.
#
# Usage: scripts/build_horovod.sh [--force] [--jobs N] [--cache-dir DIR] [--no-install] [--help]
set -euo pipefail

HOROVOD_VERSION=0.28.1
PYTHON="${PYTHON:-python}"
JOBS="${BORT_BUILD_JOBS:-2}"
CACHE_ROOT="${BORT_WHEEL_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/bort/wheels}"
FORCE=0
INSTALL=1

usage() {
    cat <<EOF
Usage: $0 [options]

Builds horovod==$HOROVOD_VERSION (PyTorch extension, Gloo controller; NCCL GPU operations when a CUDA toolkit
and a CUDA build of torch are found; MPI when mpicxx is found) for the torch installed in \$PYTHON, caches the
wheel and installs it.

Options:
  --force          rebuild even if a cached wheel exists (replaces it) and reinstall
  --jobs N         parallel compile jobs (default: \$BORT_BUILD_JOBS or 2; each job needs ~1.5 GB of memory)
  --cache-dir DIR  root of the wheel cache (default: \$BORT_WHEEL_CACHE or ~/.cache/bort/wheels); the wheel goes
                   to DIR/horovod-$HOROVOD_VERSION-torch<torch version>-py<major.minor>[-nccl]/
  --no-install     build (or find) the cached wheel and print its path, without installing it
  -h, --help       show this help

Environment:
  PYTHON                  interpreter whose torch is built against (default: python)
  BORT_WHEEL_CACHE        same as --cache-dir
  BORT_BUILD_JOBS         same as --jobs
  HOROVOD_CUDA_HOME       CUDA toolkit folder (default: /usr/local/cuda) when building the NCCL operations
  HOROVOD_NCCL_HOME       NCCL folder; if unset, the nvidia-nccl wheel that CUDA builds of torch depend on is used
  HOROVOD_BUILD_CUDA_CC_LIST  compute capabilities to compile for, e.g. 80,90 (default: those of the visible GPUs)

Exit status: 0 on success, 2 on a usage error, 1 when a requirement is missing or the build fails.
EOF
}

die() { echo "build_horovod.sh: error: $*" >&2; exit 1; }
log() { echo "build_horovod.sh: $*" >&2; }

while [[ $# -gt 0 ]]; do
    case "$1" in
        --force) FORCE=1; shift ;;
        --no-install) INSTALL=0; shift ;;
        --jobs) [[ $# -ge 2 && "$2" =~ ^[1-9][0-9]*$ ]] || { echo "build_horovod.sh: --jobs needs a positive integer" >&2; exit 2; }
                JOBS="$2"; shift 2 ;;
        --cache-dir) [[ $# -ge 2 && -n "$2" ]] || { echo "build_horovod.sh: --cache-dir needs a folder" >&2; exit 2; }
                     CACHE_ROOT="$2"; shift 2 ;;
        -h|--help) usage; exit 0 ;;
        *) echo "build_horovod.sh: unknown option '$1' (see --help)" >&2; exit 2 ;;
    esac
done

# ---- what we build against -------------------------------------------------------------------------------------
command -v "$PYTHON" >/dev/null || die "interpreter '$PYTHON' not found (set PYTHON)"
read -r TORCH_VERSION TORCH_CUDA PY_VERSION < <("$PYTHON" - <<'EOF' || true
import sys
try:
    import torch
except ImportError:
    print("none none none"); sys.exit(0)
print(torch.__version__, torch.version.cuda or "none", "%d.%d" % sys.version_info[:2])
EOF
)
[[ -n "${TORCH_VERSION:-}" && "$TORCH_VERSION" != none ]] || die "torch is not importable in '$PYTHON': install torch first (pip install -r requirements.txt)"

# NCCL operations only when torch is a CUDA build and a CUDA toolkit (nvcc) is there to compile Horovod's kernels.
NVCC=""
if [[ "$TORCH_CUDA" != none ]]; then
    for candidate in nvcc "${HOROVOD_CUDA_HOME:-/usr/local/cuda}/bin/nvcc"; do
        if command -v "$candidate" >/dev/null 2>&1; then NVCC="$(command -v "$candidate")"; break; fi
    done
    [[ -n "$NVCC" ]] || log "WARNING: torch $TORCH_VERSION is a CUDA build but no nvcc was found (PATH or \$HOROVOD_CUDA_HOME/bin): building WITHOUT NCCL operations (GPU tensors will not be reduced by Horovod). Install the CUDA toolkit $TORCH_CUDA and rerun with --force for GPU support."
fi
GPU_SUFFIX=""
[[ -n "$NVCC" ]] && GPU_SUFFIX="-nccl"

WHEEL_DIR="$CACHE_ROOT/horovod-$HOROVOD_VERSION-torch$TORCH_VERSION-py$PY_VERSION$GPU_SUFFIX"

# ---- already installed? -----------------------------------------------------------------------------------------
installed_ok() {
    "$PYTHON" - "$HOROVOD_VERSION" "$TORCH_VERSION" "${GPU_SUFFIX:+1}" <<'EOF' 2>/dev/null
import json, os, sys
want_version, want_torch, want_nccl = sys.argv[1], sys.argv[2], sys.argv[3] == "1"
import horovod
meta = json.load(open(os.path.join(os.path.dirname(horovod.__file__), "metadata.json")))
import horovod.torch as hvd
ok = horovod.__version__ == want_version and meta.get("pytorch") == want_torch and bool(hvd.nccl_built()) == want_nccl
sys.exit(0 if ok else 1)
EOF
}

if [[ $FORCE -eq 0 && $INSTALL -eq 1 ]] && installed_ok; then
    log "horovod $HOROVOD_VERSION built for torch $TORCH_VERSION is already installed; nothing to do"
    exit 0
fi

cached_wheel() { compgen -G "$WHEEL_DIR/horovod-$HOROVOD_VERSION-*.whl" | head -n 1 || true; }

# ---- build (only when no cached wheel) --------------------------------------------------------------------------
WHEEL="$(cached_wheel)"
if [[ $FORCE -eq 1 || -z "$WHEEL" ]]; then
    # Build requirements. cmake >= 3.13 (Horovod's setup.py would otherwise try to pip-install an old cmake),
    # a C++17 compiler, make, and the Python headers. Install them with apt-get when missing and we are root.
    need_apt=()
    command -v cmake >/dev/null || need_apt+=(cmake)
    command -v g++ >/dev/null || need_apt+=(g++)
    command -v make >/dev/null || need_apt+=(make)
    if [[ ${#need_apt[@]} -gt 0 ]]; then
        if [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null; then
            log "installing build tools: ${need_apt[*]}"
            apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}" >/dev/null \
                || die "apt-get install ${need_apt[*]} failed"
        else
            die "missing build tools: ${need_apt[*]} (install them, e.g. 'apt-get install ${need_apt[*]}')"
        fi
    fi
    cmake_version="$(cmake --version | head -n 1 | grep -Eo '[0-9]+\.[0-9]+(\.[0-9]+)?')"
    "$PYTHON" -c "import sys; v = tuple(map(int, '$cmake_version'.split('.')[:2])); sys.exit(v < (3, 13))" \
        || die "cmake $cmake_version is too old: Horovod needs cmake >= 3.13"
    echo 'int main() { if constexpr (true) return 0; }' | g++ -std=c++17 -x c++ -o /dev/null - 2>/dev/null \
        || die "g++ cannot compile C++17 ($(g++ --version | head -n 1)); torch $TORCH_VERSION needs a C++17 compiler"
    PY_INCLUDE="$("$PYTHON" -c 'import sysconfig; print(sysconfig.get_paths()["include"])')"
    [[ -f "$PY_INCLUDE/Python.h" ]] || die "Python headers not found in $PY_INCLUDE (install the python3-dev package matching $PYTHON)"
    "$PYTHON" -c "import setuptools" 2>/dev/null || die "setuptools is not installed in '$PYTHON' (needed with --no-build-isolation)"

    WORK="$(mktemp -d "${TMPDIR:-/tmp}/build-horovod.XXXXXX")"
    trap 'rm -rf "$WORK"' EXIT
    log "downloading the horovod==$HOROVOD_VERSION source distribution"
    "$PYTHON" -m pip download -q --no-binary :all: --no-deps --no-build-isolation -d "$WORK/sdist" "horovod==$HOROVOD_VERSION" \
        || die "pip download horovod==$HOROVOD_VERSION failed"
    SDIST="$(compgen -G "$WORK/sdist/horovod-$HOROVOD_VERSION.tar.gz" || true)"
    [[ -n "$SDIST" ]] || die "pip download did not produce horovod-$HOROVOD_VERSION.tar.gz in $WORK/sdist"
    tar -xzf "$SDIST" -C "$WORK"
    SRC="$WORK/horovod-$HOROVOD_VERSION"

    # C++14 -> C++17: replace exactly one known line in each file, fail loudly if the file says something else.
    "$PYTHON" - "$SRC" <<'EOF' || die "patching Horovod's CMakeLists failed (see above)"
import pathlib, sys
src = pathlib.Path(sys.argv[1])
patches = [
    ("CMakeLists.txt", "\nset(CMAKE_CXX_STANDARD 14)\n", "\nset(CMAKE_CXX_STANDARD 17)\n"),
    ("horovod/torch/CMakeLists.txt", "\n    set(CMAKE_CXX_STANDARD 14)\n", "\n    set(CMAKE_CXX_STANDARD 17)\n"),
]
for rel, old, new in patches:
    path = src / rel
    text = path.read_text()
    count = text.count(old)
    if count != 1:
        sys.exit(f"{path}: expected the line {old.strip()!r} exactly once, found it {count} times")
    path.write_text(text.replace(old, new))
    print(f"build_horovod.sh: patched {rel}: {old.strip()} -> {new.strip()}", file=sys.stderr)
EOF

    export HOROVOD_WITH_PYTORCH=1 HOROVOD_WITHOUT_TENSORFLOW=1 HOROVOD_WITHOUT_MXNET=1 HOROVOD_WITH_GLOO=1
    if command -v mpicxx >/dev/null 2>&1; then
        export HOROVOD_WITH_MPI=1
        unset HOROVOD_WITHOUT_MPI
        log "MPI found ($(command -v mpicxx)): building with MPI"
    else
        export HOROVOD_WITHOUT_MPI=1
        unset HOROVOD_WITH_MPI
    fi
    if [[ -n "$NVCC" ]]; then
        export HOROVOD_GPU_OPERATIONS=NCCL
        export HOROVOD_CUDA_HOME="${HOROVOD_CUDA_HOME:-$(dirname "$(dirname "$NVCC")")}"
        # Compile the CUDA kernels only for the visible GPUs' compute capabilities unless told otherwise
        # (Horovod's default is every architecture nvcc knows, which takes far longer).
        if [[ -z "${HOROVOD_BUILD_CUDA_CC_LIST:-}" ]]; then
            cc_list="$("$PYTHON" -c 'import torch; print(",".join(sorted({"%d%d" % torch.cuda.get_device_capability(i) for i in range(torch.cuda.device_count())})))' 2>/dev/null || true)"
            [[ -n "$cc_list" ]] && export HOROVOD_BUILD_CUDA_CC_LIST="$cc_list"
        fi
        # CUDA builds of torch ship NCCL as the nvidia-nccl wheel (headers + libnccl.so.2 without the libnccl.so
        # link that CMake's find_library needs): point Horovod at it unless a NCCL location is given.
        if [[ -z "${HOROVOD_NCCL_HOME:-}${HOROVOD_NCCL_INCLUDE:-}${HOROVOD_NCCL_LIB:-}" ]]; then
            nccl_dir="$("$PYTHON" -c 'import nvidia.nccl, os; print(os.path.dirname(nvidia.nccl.__file__) if nvidia.nccl.__file__ else list(nvidia.nccl.__path__)[0])' 2>/dev/null || true)"
            if [[ -n "$nccl_dir" && -f "$nccl_dir/include/nccl.h" ]]; then
                mkdir -p "$WORK/nccl-lib"
                lib="$(compgen -G "$nccl_dir/lib/libnccl.so*" | head -n 1 || true)"
                [[ -n "$lib" ]] || die "nvidia-nccl has headers but no libnccl.so* in $nccl_dir/lib"
                ln -s "$lib" "$WORK/nccl-lib/libnccl.so"
                export HOROVOD_NCCL_INCLUDE="$nccl_dir/include" HOROVOD_NCCL_LIB="$WORK/nccl-lib" HOROVOD_NCCL_LINK=SHARED
                log "using NCCL from the nvidia-nccl wheel: $nccl_dir"
            fi
        fi
        log "CUDA found ($NVCC, torch CUDA $TORCH_CUDA): building with HOROVOD_GPU_OPERATIONS=NCCL${HOROVOD_BUILD_CUDA_CC_LIST:+ for compute capabilities $HOROVOD_BUILD_CUDA_CC_LIST}"
    else
        unset HOROVOD_GPU_OPERATIONS
    fi
    export MAKEFLAGS="-j$JOBS"
    # The build itself is single-threaded per compile job; keep OpenMP-using tools (torch import in CMake) quiet.
    export OMP_NUM_THREADS=1

    log "building the wheel with $JOBS compile jobs (about 2.5 minutes on 2 cores) ..."
    start=$SECONDS
    "$PYTHON" -m pip wheel --no-build-isolation --no-deps -w "$WORK/wheel" "$SRC" > "$WORK/build.log" 2>&1 || {
        tail -n 60 "$WORK/build.log" >&2
        die "building horovod failed; the last 60 lines of the build log are above"
    }
    BUILT="$(compgen -G "$WORK/wheel/horovod-$HOROVOD_VERSION-*.whl" | head -n 1 || true)"
    [[ -n "$BUILT" ]] || die "pip wheel finished but produced no horovod wheel"
    log "built $(basename "$BUILT") in $((SECONDS - start)) s"

    # Into the cache atomically: copy under a temporary name in the same folder, then rename.
    mkdir -p "$WHEEL_DIR"
    rm -f "$WHEEL_DIR"/horovod-"$HOROVOD_VERSION"-*.whl
    cp "$BUILT" "$WHEEL_DIR/.tmp-$(basename "$BUILT")"
    mv -f "$WHEEL_DIR/.tmp-$(basename "$BUILT")" "$WHEEL_DIR/$(basename "$BUILT")"
    WHEEL="$WHEEL_DIR/$(basename "$BUILT")"
else
    log "using the cached wheel $WHEEL"
fi

if [[ $INSTALL -eq 0 ]]; then
    echo "$WHEEL"
    exit 0
fi

# torch stays pinned at the version the wheel was built against (Horovod itself does not require torch).
"$PYTHON" -m pip install -q --force-reinstall --no-deps "$WHEEL" || die "pip install $WHEEL failed"
"$PYTHON" -m pip install -q "$WHEEL" "torch==$TORCH_VERSION" || die "installing Horovod's dependencies failed"
installed_ok || die "horovod was installed from $WHEEL but 'import horovod.torch' fails or reports another build; rerun with --force"
log "installed horovod $HOROVOD_VERSION for torch $TORCH_VERSION from $WHEEL"
