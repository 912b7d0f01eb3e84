# Source this on the GPU machine, from the repo root, with .gpu carried (scripts/gpu_bundle.sh
# made it here):
#
#   source scripts/gpu_setup.sh && python3 -c 'import phi4mm'
#
# It installs .gpu/whl into /tmp/site, builds .gpu/llama.cpp with CUDA into $LLAMA_LIB (default
# /tmp/llama-lib; skipped when libllama.so is already there; unpacked instead from
# .gpu/llama-lib.tar.gz or .gpu/llama-lib.tar.gz.part* when those were carried: an earlier
# build's PACK_TO archive, brought back from $OUT), makes this checkout importable as phi4mm
# (phi4mm/, with converter/ as phi4mm.converter and server/ as phi4mm.server, as pyproject's
# package-dir says) through a .pth file in python3's site-packages, so that no setuptools build is needed, and exports:
#   PYTHONPATH          .gpu/py (llama_cpp without libraries) : /tmp/site (the wheels)
#   LLAMA_CPP_LIB_PATH  $LLAMA_LIB, where llama_cpp loads libllama.so (and, through its
#                       RUNPATH $ORIGIN, libggml*.so) from
# It also points .gpu/py/llama_cpp/lib at $LLAMA_LIB, for the modules that ignore the variable
# (llama_cpp._ggml). The build's variables (GGML_CUDA, CUDA_ARCH, JOBS...) pass through.
# Returns non-zero on failure; sourcing it again redoes only the cheap steps.

_phi4mm_gpu_setup() {
    local root lib purelib
    root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd) || return 1
    lib=${LLAMA_LIB:-/tmp/llama-lib}
    [ -d "$root/.gpu/py/llama_cpp" ] || { echo "gpu_setup: no .gpu (carry it)" >&2; return 1; }
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site "$root"/.gpu/whl/*.whl || return 1
    if [ ! -e "$lib/libllama.so" ]; then
        if compgen -G "$root/.gpu/llama-lib.tar.gz*" >/dev/null; then
            mkdir -p "$lib" && cat "$root"/.gpu/llama-lib.tar.gz* | tar -xz -C "$lib" || return 1
            echo "gpu_setup: unpacked .gpu/llama-lib.tar.gz* into $lib"
        else
            "$root/scripts/gpu_build_llama.sh" "$lib" || return 1
        fi
    fi
    # What setuptools' editable install would do, without setuptools: a finder, first on
    # sys.meta_path (so a checkout's phi4mm/ in the current folder cannot hide converter/).
    purelib=$(python3 -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])') || return 1
    cat >/tmp/phi4mm_gpu_finder.py <<EOF || return 1
import importlib.util, sys
_MAP = {"phi4mm": "$root/phi4mm", "phi4mm.converter": "$root/converter", "phi4mm.server": "$root/server"}
class Phi4mmGpuFinder:
    @classmethod
    def find_spec(cls, name, path=None, target=None):
        where = _MAP.get(name)
        if where is None:
            return None
        return importlib.util.spec_from_file_location(name, where + "/__init__.py",
                                                      submodule_search_locations=[where])
sys.meta_path.insert(0, Phi4mmGpuFinder)
EOF
    echo "import runpy; runpy.run_path('/tmp/phi4mm_gpu_finder.py')" >"$purelib/phi4mm_gpu.pth" || return 1
    ln -sfn "$lib" "$root/.gpu/py/llama_cpp/lib" || return 1
    export LLAMA_CPP_LIB_PATH=$lib
    export PYTHONPATH=$root/.gpu/py:/tmp/site${PYTHONPATH:+:$PYTHONPATH}
}
_phi4mm_gpu_setup
