"""Decoder offload (engine/offload.py, issue 17): which GPUs llama.cpp uses, how many layers it
places on them, the start-up line and the warning of a CPU-only build, with devices described as
the ggml backend API describes them; and the ggml device binding itself, on this machine."""

from __future__ import annotations

import pytest

from phi4mm.engine.offload import UNKNOWN_GPU, Device, offload_devices, plan
from phi4mm.errors import InputError

GIB = 1 << 30
CPU = Device("CPU", "Intel(R) Xeon(R) Processor", "cpu", "CPU", 20 * GIB, 24 * GIB)
H200 = [Device(f"CUDA{i}", "NVIDIA H200", "gpu", "CUDA", 140 * GIB, 143 * GIB) for i in range(2)]
IGPU = Device("Vulkan0", "Intel(R) Graphics", "igpu", "Vulkan", 8 * GIB, 16 * GIB)
RPC = Device("RPC[10.0.0.2:50052]", "RPC[10.0.0.2:50052]", "gpu", "RPC", GIB, GIB)
N_BLOCKS = 32  # Phi-4-mini: llama.cpp places 33 layers (the output layer counts)


@pytest.mark.parametrize("devices, expected", [
    ([CPU, *H200], H200),                         # the dedicated GPUs, in order
    ([CPU, IGPU, H200[0]], [H200[0]]),            # an integrated GPU only when there is no other
    ([CPU, IGPU], [IGPU]),
    ([H200[0], RPC], [RPC, H200[0]]),             # RPC servers first, as llama.cpp orders them
    ([CPU], []),
])
def test_offload_devices_are_llama_cpps(devices, expected):
    assert offload_devices(devices) == tuple(expected)


@pytest.mark.parametrize("n_gpu_layers, main_gpu, on_gpu, line", [
    (None, None, 33, "decoder: 33/33 layers on CUDA0 (NVIDIA H200), CUDA1 (NVIDIA H200)"),
    (-1, 1, 33, "decoder: 33/33 layers on CUDA1 (NVIDIA H200)"),
    (99, 0, 33, "decoder: 33/33 layers on CUDA0 (NVIDIA H200)"),
    (10, 0, 10, "decoder: 10/33 layers on CUDA0 (NVIDIA H200), the rest on the CPU"),
    (0, None, 0, "decoder: on the CPU (0 of 33 layers asked for on the GPU)"),
])
def test_a_gpu_build_offloads_every_layer_by_default(n_gpu_layers, main_gpu, on_gpu, line):
    chosen = plan(n_gpu_layers, main_gpu, True, H200)
    assert chosen.warning is None
    assert chosen.n_gpu_layers == (-1 if n_gpu_layers is None else n_gpu_layers)
    placed = chosen.placed(N_BLOCKS)
    assert (placed.n_gpu_layers, placed.n_layers) == (on_gpu, 33)
    assert placed.describe() == line
    assert placed.blocks_on_gpu == max(0, on_gpu - 1)  # the output layer goes first, then the last blocks


def test_a_gpu_build_whose_devices_cannot_be_listed_still_offloads():
    placed = plan(None, 3, True, []).placed(N_BLOCKS)
    assert placed.devices == (UNKNOWN_GPU,)
    assert placed.describe() == "decoder: 33/33 layers on the GPU"


def test_a_main_gpu_that_does_not_exist_is_refused_naming_the_gpus():
    with pytest.raises(InputError, match=r"main_gpu is 2, .*0: CUDA0 \(NVIDIA H200\), 1: CUDA1") as caught:
        plan(None, 2, True, H200)
    assert caught.value.param == "main_gpu"


@pytest.mark.parametrize("n_gpu_layers, main_gpu, asked", [
    (10, None, "10 decoder layers"), (-1, None, "every decoder layer"), (None, 1, "main GPU 1"),
    (10, 1, "10 decoder layers"),
])
def test_a_cpu_build_asked_for_gpu_layers_warns_and_stays_on_the_cpu(n_gpu_layers, main_gpu, asked):
    chosen = plan(n_gpu_layers, main_gpu, False, [], package="llama-cpp-python==0.3.36")
    assert (chosen.n_gpu_layers, chosen.main_gpu, chosen.devices) == (0, None, ())
    assert f"GPU offload was asked for ({asked})" in chosen.warning
    assert "the installed llama-cpp-python has no GPU backend" in chosen.warning
    assert "-DGGML_CUDA=on" in chosen.warning and "llama-cpp-python==0.3.36" in chosen.warning
    assert 'README, section "GPU"' in chosen.warning
    placed = chosen.placed(N_BLOCKS)
    assert placed.n_gpu_layers == 0
    assert placed.describe() == "decoder: on the CPU (this llama.cpp build has no GPU backend)"


@pytest.mark.parametrize("n_gpu_layers, main_gpu", [(None, None), (0, None), (0, 1)])
def test_a_cpu_build_not_asked_for_the_gpu_says_nothing(n_gpu_layers, main_gpu):
    assert plan(n_gpu_layers, main_gpu, False, []).warning is None


@pytest.mark.parametrize("n_gpu_layers, main_gpu, param", [
    (-2, None, "n_gpu_layers"), (1.5, None, "n_gpu_layers"), (True, None, "n_gpu_layers"),
    (None, -1, "main_gpu"), (None, "0", "main_gpu"),
])
def test_bad_values_are_input_errors(n_gpu_layers, main_gpu, param):
    for gpu_backend in (True, False):
        with pytest.raises(InputError) as caught:
            plan(n_gpu_layers, main_gpu, gpu_backend, H200)
        assert caught.value.param == param


def test_the_ggml_device_binding_lists_this_machines_devices():
    """The ggml_backend_dev_* functions bound with ctypes in engine/llama.py: every build has the CPU
    device, with its memory; a GPU build lists its GPUs, and only then."""
    from phi4mm.engine import llama

    found = llama.devices()
    cpus = [d for d in found if d.kind == "cpu"]
    assert len(cpus) == 1 and cpus[0].backend == "CPU" and cpus[0].name
    assert 0 < cpus[0].memory_free_bytes <= cpus[0].memory_total_bytes
    assert bool(offload_devices(found)) == llama.gpu_offload_supported()
