#!/usr/bin/env bash
# Build the llama.cpp that scripts/gpu_bundle.sh put in .gpu/llama.cpp as shared libraries
# (libggml-base, libggml, libggml-cpu, libggml-cuda, libllama) and copy them, flat, into LIBDIR,
# for the llama_cpp package in .gpu/py to load (LLAMA_CPP_LIB_PATH=LIBDIR).
# Meant for the GPU machine (CUDA, CMake, ninja; no network); with GGML_CUDA=OFF it also builds
# the CPU-only libraries anywhere.
#
#   scripts/gpu_build_llama.sh [LIBDIR]          LIBDIR defaults to /tmp/llama-lib
#
# Environment (defaults in brackets):
#   GGML_CUDA [ON]        OFF builds the CPU backend alone
#   CUDA_ARCH [90]        CMAKE_CUDA_ARCHITECTURES (90 = H100/H200: sm_90 code and compute_90 PTX)
#   GGML_NATIVE [ON]      -march=native for the CPU backend (build on the machine that runs it)
#   JOBS [nproc]          parallel compile jobs
#   BUILD_DIR [/tmp/llama-build]   CMake build folder (kept: a rerun only rebuilds what changed)
#   LLAMA_SRC [.gpu/llama.cpp]     the llama.cpp source
#   PACK_TO [unset]       also write LIBDIR's libraries to this .tar.gz (e.g. $OUT/llama-lib.tar.gz),
#                         cut into 15 MiB parts PACK_TO.part00... when bigger; scripts/gpu_setup.sh
#                         unpacks .gpu/llama-lib.tar.gz or its parts instead of building
#   EXTRA_CMAKE_ARGS      appended to the configure command line
#
# The options mirror llama-cpp-python's own CMakeLists.txt where they change the libraries:
# shared libraries, RPATH $ORIGIN plus the link folders (CUDA's), curl off; and llama.cpp's
# defaults otherwise (OpenMP, llamafile, CUDA graphs, CUDA flash attention). Left out: the
# 'common' helper library and mtmd (libmtmd.so), which phi4mm does not use.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
SRC=${LLAMA_SRC:-$ROOT/.gpu/llama.cpp}
LIBDIR=${1:-/tmp/llama-lib}
BUILD=${BUILD_DIR:-/tmp/llama-build}
CUDA=${GGML_CUDA:-ON}
ARCH=${CUDA_ARCH:-90}
NATIVE=${GGML_NATIVE:-ON}
JOBS=${JOBS:-$(nproc)}

[ -f "$SRC/CMakeLists.txt" ] || { echo "error: no llama.cpp at $SRC (run scripts/gpu_bundle.sh here first, carry .gpu)" >&2; exit 1; }

args=(
    -S "$SRC" -B "$BUILD"
    -DCMAKE_BUILD_TYPE=Release
    -DBUILD_SHARED_LIBS=ON
    -DLLAMA_BUILD_COMMON=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF
    -DLLAMA_BUILD_TOOLS=OFF -DLLAMA_BUILD_SERVER=OFF -DLLAMA_BUILD_APP=OFF -DLLAMA_BUILD_MTMD=OFF
    -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF
    # the build number and commit only end up in log lines; the vendored tree has no git
    -DLLAMA_BUILD_NUMBER=0 -DLLAMA_BUILD_COMMIT=vendored
    -DGGML_NATIVE="$NATIVE"
    -DGGML_CUDA="$CUDA"
    -DCMAKE_INSTALL_RPATH='$ORIGIN' -DCMAKE_BUILD_WITH_INSTALL_RPATH=ON
    -DCMAKE_INSTALL_RPATH_USE_LINK_PATH=ON
)
if command -v ninja >/dev/null; then args+=(-G Ninja); fi
if [ "$CUDA" = ON ]; then
    if ! command -v nvcc >/dev/null && [ -x /usr/local/cuda/bin/nvcc ]; then
        export PATH=/usr/local/cuda/bin:$PATH
    fi
    command -v nvcc >/dev/null || { echo "error: nvcc not found" >&2; exit 1; }
    args+=(-DCMAKE_CUDA_COMPILER="$(command -v nvcc)" -DCMAKE_CUDA_ARCHITECTURES="$ARCH"
           -DGGML_CUDA_NCCL=OFF)
    nvcc --version | tail -2
fi
# shellcheck disable=SC2206
args+=(${EXTRA_CMAKE_ARGS:-})

start=$(date +%s)
mkdir -p "$BUILD"
log=$BUILD/phi4mm-configure.log
echo "== configure: cmake ${args[*]}"
cmake "${args[@]}" >"$log" 2>&1 || { cat "$log"; exit 1; }
grep -E "CUDA Toolkit|CMAKE_CUDA_ARCHITECTURES|Including .* backend|Adding CPU backend|Found OpenMP:|NCCL" \
    "$log" || true
configured=$(date +%s)
echo "== build (-j$JOBS)"
cmake --build "$BUILD" --target llama -j "$JOBS"
built=$(date +%s)

mkdir -p "$LIBDIR"
rm -f "$LIBDIR"/lib*.so*
cp -P "$BUILD"/bin/lib*.so* "$LIBDIR"/
{
    echo "source: $SRC"
    cat "$SRC/PHI4MM_VENDORED.txt" 2>/dev/null || true
    echo "cmake ${args[*]}"
    if [ "$CUDA" = ON ]; then nvcc --version | tail -1; fi
} >"$LIBDIR/BUILD-INFO.txt"
ls -la "$LIBDIR"
if [ -n "${PACK_TO:-}" ]; then
    tar -C "$LIBDIR" -czf "$PACK_TO" .
    echo "packed: $PACK_TO ($(du -h "$PACK_TO" | cut -f1))"
    # the device tool brings back files of at most 16 MiB: cut bigger archives into parts
    if [ "$(stat -c %s "$PACK_TO")" -gt $((15 * 1024 * 1024)) ]; then
        split -b 15M -d "$PACK_TO" "$PACK_TO.part"
        rm "$PACK_TO"
        ls -la "$PACK_TO".part*
    fi
fi
echo "configure: $((configured - start)) s, build: $((built - configured)) s, total: $((built - start)) s"
echo "use: LLAMA_CPP_LIB_PATH=$LIBDIR PYTHONPATH=$ROOT/.gpu/py:\$PYTHONPATH"
