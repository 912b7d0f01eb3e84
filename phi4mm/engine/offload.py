"""Where the text decoder's layers go (issue 17): the GPUs llama.cpp offloads to, its placement
rule, the start-up line that says where they went, and the warning when GPU layers are asked of a
build without a GPU backend. Pure: the devices and the build's support come from engine/llama.py.

llama.cpp counts n_layer + 1 layers (the blocks and the output layer). Asked for k, it puts the
output layer and the last k - 1 blocks on the GPUs (k < 0: all of them), the rest on the CPU.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from phi4mm.errors import InputError

README_SECTION = 'the README, section "GPU"'


@dataclass(frozen=True)
class Device:
    """A ggml backend device (ggml_backend_dev_*)."""
    name: str                # "CUDA0", "Metal", "Vulkan0", "CPU"
    description: str         # "NVIDIA H200"
    kind: str                # "cpu", "gpu", "igpu" (integrated), "accel", "meta"
    backend: str             # its backend's registry name: "CUDA", "Metal", "Vulkan", "RPC", "CPU"
    memory_free_bytes: int
    memory_total_bytes: int

    @property
    def label(self) -> str:
        """"CUDA0 (NVIDIA H200)"; the name alone when there is no other description."""
        return f"{self.name} ({self.description})" if self.description and self.description != self.name \
            else self.name


# Stands for the GPU when the build has a GPU backend but its devices could not be listed.
UNKNOWN_GPU = Device("the GPU", "", "gpu", "", 0, 0)


def offload_devices(devices: Sequence[Device]) -> tuple[Device, ...]:
    """The devices llama.cpp offloads to by default, in its order (`main_gpu` indexes them): RPC
    servers, then the dedicated GPUs, then integrated GPUs only when there is no other."""
    gpus = [d for d in devices if d.kind == "gpu"]
    found = [d for d in gpus if d.backend == "RPC"] + [d for d in gpus if d.backend != "RPC"]
    return tuple(found or [d for d in devices if d.kind == "igpu"])


@dataclass(frozen=True)
class Offload:
    """Where the decoder's layers are, once loaded."""
    n_layers: int                 # what llama.cpp places: n_layer blocks + the output layer
    n_gpu_layers: int             # of them on the GPUs: the output layer first, then the last blocks
    devices: tuple[Device, ...]   # the GPUs holding them (empty: all on the CPU)
    gpu_backend: bool             # the installed llama.cpp has a GPU backend

    @property
    def blocks_on_gpu(self) -> int:
        """Blocks on the GPUs: their KV cells (llama.cpp's offload_kqv, on) and LoRA tensors are there."""
        return max(0, self.n_gpu_layers - 1)

    def describe(self) -> str:
        """One start-up line: "decoder: 33/33 layers on CUDA0 (NVIDIA H200)"."""
        if not self.gpu_backend:
            return "decoder: on the CPU (this llama.cpp build has no GPU backend)"
        if self.n_gpu_layers == 0:
            return f"decoder: on the CPU (0 of {self.n_layers} layers asked for on the GPU)"
        where = ", ".join(d.label for d in self.devices)
        rest = "" if self.n_gpu_layers == self.n_layers else ", the rest on the CPU"
        return f"decoder: {self.n_gpu_layers}/{self.n_layers} layers on {where}{rest}"


@dataclass(frozen=True)
class Plan:
    """What to ask llama.cpp for (llama_model_params) and, when it cannot be done, why."""
    n_gpu_layers: int               # llama_model_params.n_gpu_layers; -1: every layer
    main_gpu: int | None            # None: layers split over every GPU; else this GPU alone
    devices: tuple[Device, ...]     # the GPUs llama.cpp will use
    gpu_backend: bool
    warning: str | None = None

    def placed(self, n_layer: int) -> Offload:
        """Where llama.cpp put the layers of a model of `n_layer` blocks (its own rule)."""
        n_layers = n_layer + 1
        n_gpu = 0 if not self.devices else n_layers if self.n_gpu_layers < 0 else min(self.n_gpu_layers, n_layers)
        return Offload(n_layers, n_gpu, self.devices if n_gpu else (), self.gpu_backend)


def plan(n_gpu_layers: int | None, main_gpu: int | None, gpu_backend: bool, gpus: Sequence[Device],
         package: str = "llama-cpp-python") -> Plan:
    """The offload to ask for. `n_gpu_layers` None: every layer when the build has a GPU backend,
    else 0; -1: every layer. `main_gpu` None: split the layers over every GPU in `gpus` (as listed
    by offload_devices); an index: that GPU alone. Without a GPU backend everything stays on the
    CPU, with a warning when GPU layers were asked for. `package` names the installed bindings."""
    _check(n_gpu_layers, -1, "n_gpu_layers")
    _check(main_gpu, 0, "main_gpu")
    if not gpu_backend:
        asked = n_gpu_layers != 0 and (n_gpu_layers is not None or main_gpu is not None)
        return Plan(0, None, (), False, no_gpu_backend_warning(n_gpu_layers, main_gpu, package) if asked else None)
    gpus = tuple(gpus) or (UNKNOWN_GPU,)
    if main_gpu is not None and gpus != (UNKNOWN_GPU,):
        if main_gpu >= len(gpus):
            names = ", ".join(f"{i}: {d.label}" for i, d in enumerate(gpus))
            raise InputError(f"main_gpu is {main_gpu}, expected one of the GPUs llama.cpp sees ({names})",
                             param="main_gpu")
        gpus = (gpus[main_gpu],)
    return Plan(-1 if n_gpu_layers is None else n_gpu_layers, main_gpu, gpus, True)


def no_gpu_backend_warning(n_gpu_layers: int | None, main_gpu: int | None, package: str) -> str:
    what = (f"main GPU {main_gpu}" if n_gpu_layers is None
            else "every decoder layer" if n_gpu_layers < 0 else f"{n_gpu_layers} decoder layers")
    return (f"GPU offload was asked for ({what}), but the installed llama-cpp-python has no GPU backend "
            f"(it is a CPU-only build), so the decoder runs on the CPU. To offload it, reinstall "
            f"llama-cpp-python with CUDA, Metal or Vulkan, for CUDA: CMAKE_ARGS=\"-DGGML_CUDA=on\" "
            f"pip install --force-reinstall --no-cache-dir {package} (more in {README_SECTION})")


def _check(value: object, least: int, name: str) -> None:
    if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < least):
        raise InputError(f"{name} is {value!r}, expected None or an integer >= {least}", param=name)
