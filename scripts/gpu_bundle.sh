#!/usr/bin/env bash
# Prepare .gpu/, the folder that travels (as a carried, git-ignored path) to a GPU machine
# that has CUDA, CMake, ninja and Python 3.12 but no network and no llama-cpp-python:
#
#   .gpu/llama.cpp/   llama.cpp as vendored in the installed llama-cpp-python's sdist, cut down to
#                     what CMake needs for libggml*/libllama (CPU + CUDA backends, no tools/tests/
#                     examples/common/mtmd); build it there with scripts/gpu_build_llama.sh
#   .gpu/py/llama_cpp the installed llama_cpp Python package without its lib/ (point
#                     LLAMA_CPP_LIB_PATH at the libraries built there)
#   .gpu/whl/         cp312 manylinux x86_64 wheels of what phi4mm needs at import and run time and
#                     the GPU image lacks (versions as installed in .venv)
#   .gpu/MANIFEST.txt versions, sha256 of the sdist, sizes
#
# Run here, from anywhere: scripts/gpu_bundle.sh   (re-runnable; downloads are cached in
# ${PHI4MM_GPU_CACHE:-~/.cache/phi4mm-gpu}). Needs .venv (with llama-cpp-python installed) and PyPI.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PY=${PYTHON:-$ROOT/.venv/bin/python}
DEST=$ROOT/.gpu
CACHE=${PHI4MM_GPU_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/phi4mm-gpu}
# What the GPU image lacks: phi4mm's own needs (gguf, av, soundfile -> cffi -> pycparser,
# array-api-compat), llama_cpp's (diskcache), the HTTP server's (starlette, uvicorn,
# python-multipart; anyio, h11, click are there) and array-api-strict (tests of the array-API code).
WHEELS=(gguf diskcache av soundfile cffi pycparser array-api-compat starlette uvicorn python-multipart
        array-api-strict)
# What the GPU image has (the device notes' KINDS.md, "Python packages already there", 2026-11-17):
ON_GPU="absl-py accelerate aiofiles aiohappyeyeballs aiohttp aiosignal annotated-doc anyio attrs botorch
build certifi charset-normalizer chex click cloudpickle cmake colorama contourpy coverage cuda-bindings
cuda-core cuda-pathfinder cuda-toolkit cupy-cuda13x cycler cython diffrax e3nn einops equinox etils
execnet filelock flatbuffers flax fonttools formulaic frozenlist fsspec gpytorch grpcio h11 h5py hf-xet
httpcore httpx huggingface-hub humanize hypothesis idna imageio iniconfig interface-meta jax
jax-cuda13-pjrt jax-cuda13-plugin jaxlib jaxtyping jinja2 joblib kiwisolver lazy-loader lightning
lightning-utilities linear-operator lineax llvmlite lxml markdown markdown-it-py markupsafe matplotlib
mdurl meson ml-dtypes mpi4py mpmath msgpack multidict multipledispatch mypy-extensions nanobind narwhals
networkx ninja numba numba-cuda numpy numpyro nvidia-cublas nvidia-cuda-cupti nvidia-cuda-nvrtc
nvidia-cuda-runtime nvidia-cudnn-cu13 nvidia-cufft nvidia-cufile nvidia-curand nvidia-cusolver
nvidia-cusparse nvidia-cusparselt-cu13 nvidia-ml-py nvidia-nccl-cu13 nvidia-nvjitlink nvidia-nvshmem-cu13
nvidia-nvtx onnx onnx-ir onnxruntime onnxscript opencv-python-headless optax opt-einsum opt-einsum-fx
optimistix orbax-checkpoint packaging pandas pathspec patsy peft pillow pip pluggy portalocker
prometheus-client propcache protobuf psutil pyarrow pybind11 py-cpuinfo pygments pyparsing
pyproject-hooks pyre-extensions pytest pytest-benchmark pytest-cov pytest-mock pytest-timeout
pytest-xdist python-dateutil pytorch-lightning pyyaml regex requests rich sacrebleu safetensors
scikit-build-core scikit-image scikit-learn scipy seaborn sentencepiece sentence-transformers setuptools
shellingham simplejson six sortedcontainers statsmodels sympy tabulate tensorboard
tensorboard-data-server tensorstore threadpoolctl tifffile tiktoken timm tokenizers toolz torch
torchaudio torchdiffeq torch-geometric torchmetrics torchvision tqdm transformers treescope triton typer
typing-extensions typing-inspect urllib3 uvloop wadler-lindig werkzeug wheel wrapt xarray xxhash yarl zipp"
PLATFORMS=(manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_24_x86_64 manylinux_2_17_x86_64
           manylinux2014_x86_64 manylinux1_x86_64 manylinux_2_31_x86_64 manylinux_2_34_x86_64
           manylinux_2_35_x86_64)

cd "$ROOT"
if ! git check-ignore -q .gpu/x; then
    echo "error: .gpu/ is not git-ignored (add '/.gpu/' to .gitignore)" >&2
    exit 1
fi
mkdir -p "$CACHE/whl" "$DEST"

version_of() { "$PY" -c 'import importlib.metadata as m, sys; print(m.version(sys.argv[1]))' "$1"; }

# --- pyproject's requirements: each carried here or on the GPU machine ----------------------
# (llama-cpp-python is replaced by .gpu/llama.cpp + .gpu/py; the test extra's browser, OpenAPI
# and OpenAI-client tools and the reference extra are not carried, only listed)
"$PY" - "$ON_GPU ${WHEELS[*]} llama-cpp-python" <<'EOF'
import re, sys, tomllib
have = {re.sub(r"[-_.]+", "-", n).lower() for n in sys.argv[1].split()}
proj = tomllib.load(open("pyproject.toml", "rb"))["project"]
groups = {"dependencies": proj["dependencies"],
          **{f"[{k}]": v for k, v in proj.get("optional-dependencies", {}).items()}}
missing = {}
for group, reqs in groups.items():
    for req in reqs:
        name = re.sub(r"[-_.]+", "-", re.match(r"[A-Za-z0-9_.-]+", req).group()).lower()
        if name != "phi4mm" and name not in have:
            missing.setdefault(group, []).append(name)
for group, names in missing.items():
    print(f"not carried, not on the GPU image: {group}: {' '.join(names)}")
if missing.get("dependencies") or missing.get("[server]"):
    sys.exit("error: add those to WHEELS in scripts/gpu_bundle.sh")
EOF

# --- the installed llama_cpp package and its sdist -------------------------------------------
LCP_VER=$(version_of llama-cpp-python)
LCP_DIR=$("$PY" -c 'import importlib.util, os; print(os.path.dirname(importlib.util.find_spec("llama_cpp").origin))')
SDIST=$CACHE/llama_cpp_python-$LCP_VER.tar.gz
if [ ! -s "$SDIST" ]; then
    echo "== downloading the llama-cpp-python $LCP_VER sdist"
    "$PY" -m pip download -q --no-deps --no-binary :all: -d "$CACHE" "llama-cpp-python==$LCP_VER"
fi
[ -s "$SDIST" ] || { echo "error: $SDIST missing after download" >&2; exit 1; }

TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
TOP=llama_cpp_python-$LCP_VER
V=$TOP/vendor/llama.cpp
echo "== unpacking $SDIST"
tar -xzf "$SDIST" -C "$TMP" "$TOP/llama_cpp" "$TOP/CMakeLists.txt" \
    "$V/CMakeLists.txt" "$V/LICENSE" "$V/cmake" "$V/include" "$V/src" "$V/ggml" "$V/vendor"

# The sdist's Python sources must be the installed ones (same version, same build).
if ! diff -rq -x __pycache__ -x lib "$TMP/$TOP/llama_cpp" "$LCP_DIR" >"$TMP/pydiff"; then
    echo "error: the sdist's llama_cpp differs from the installed $LCP_DIR:" >&2
    cat "$TMP/pydiff" >&2
    exit 1
fi

# --- a: llama.cpp, cut to the libraries ------------------------------------------------------
L=$TMP/$V
# ggml backends other than CPU and CUDA are only add_subdirectory'd when switched on.
for d in "$L"/ggml/src/ggml-*/; do
    case $(basename "$d") in ggml-cpu|ggml-cuda) ;; *) rm -rf "$d" ;; esac
done
# x86-64 only: the CPU backend's other architectures are only listed under their own arch.
for d in "$L"/ggml/src/ggml-cpu/arch/*/; do
    [ "$(basename "$d")" = x86 ] || rm -rf "$d"
done
rm -rf "$L"/ggml/src/ggml-cpu/spacemit "$L"/ggml/src/ggml-cpu/kleidiai
# vendor/: its CMakeLists always adds hash (a small static library) and four header-only
# INTERFACE targets that only common/ and tools/mtmd include; keep their CMakeLists, drop the
# headers and cpp-httplib (common only).
rm -rf "$L"/vendor/cpp-httplib
for d in miniaudio nlohmann sheredom stb; do
    find "$L/vendor/$d" -type f ! -name CMakeLists.txt -delete
    find "$L/vendor/$d" -mindepth 1 -type d -empty -delete
done
cat >"$L/PHI4MM_VENDORED.txt" <<EOF
llama.cpp as vendored in llama-cpp-python $LCP_VER (sdist sha256 $(sha256sum "$SDIST" | cut -d' ' -f1)),
cut down by scripts/gpu_bundle.sh to build libggml-base, libggml, libggml-cpu, libggml-cuda and
libllama (no tools, tests, examples, common, mtmd, other backends or architectures).
EOF
rm -rf "$DEST/llama.cpp"
mv "$L" "$DEST/llama.cpp"

# --- b: the pure-Python llama_cpp package (loads its libraries through ctypes) ---------------
rm -rf "$DEST/py"
mkdir -p "$DEST/py"
cp -r "$TMP/$TOP/llama_cpp" "$DEST/py/llama_cpp"
rm -rf "$DEST/py/llama_cpp/lib"
find "$DEST/py" -name __pycache__ -prune -exec rm -rf {} +

# --- c: wheels -------------------------------------------------------------------------------
plat_args=()
for p in "${PLATFORMS[@]}"; do plat_args+=(--platform "$p"); done
rm -rf "$DEST/whl"
mkdir -p "$DEST/whl"
for name in "${WHEELS[@]}"; do
    ver=$(version_of "$name")
    stem=$(echo "$name" | tr 'A-Z-' 'a-z_')
    shopt -s nullglob nocaseglob
    have=("$CACHE/whl/$stem-$ver-"*.whl)
    shopt -u nullglob nocaseglob
    if [ ${#have[@]} -eq 0 ]; then
        echo "== downloading $name==$ver"
        "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
            --implementation cp "${plat_args[@]}" -d "$CACHE/whl" "$name==$ver"
        shopt -s nullglob nocaseglob
        have=("$CACHE/whl/$stem-$ver-"*.whl)
        shopt -u nullglob nocaseglob
    fi
    [ ${#have[@]} -eq 1 ] || { echo "error: expected one wheel for $name==$ver, got: ${have[*]:-none}" >&2; exit 1; }
    cp "${have[0]}" "$DEST/whl/"
done

# --- manifest and sizes ----------------------------------------------------------------------
{
    echo "made by scripts/gpu_bundle.sh at commit $(git rev-parse --short HEAD)"
    echo "llama-cpp-python $LCP_VER; sdist sha256 $(sha256sum "$SDIST" | cut -d' ' -f1)"
    echo "wheels:"
    for w in "$DEST"/whl/*.whl; do printf '  %-72s %s\n' "$(basename "$w")" "$(du -h "$w" | cut -f1)"; done
    echo "sizes:"
    du -sh "$DEST/llama.cpp" "$DEST/py" "$DEST/whl" | sed 's/^/  /'
} >"$DEST/MANIFEST.txt"
cat "$DEST/MANIFEST.txt"
echo "files: $(find "$DEST" -type f | wc -l)"
echo "total .gpu: $(du -sh "$DEST" | cut -f1) ($(du -sb "$DEST" | cut -f1) bytes)"
echo "repo without .gpu (what travels besides it): $(git ls-files -z --cached --others --exclude-standard | du -cb --files0-from=- 2>/dev/null | tail -1 | cut -f1) bytes"
