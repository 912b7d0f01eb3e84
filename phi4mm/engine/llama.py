"""The only module that imports llama_cpp: one small owner class per C handle (model, adapter,
context with its batches, sampler), embedding injection, LoRA sets and the quantizer.

llamacpp-notes.md §3 (quantizer), §4 (LoRA), §5 (embedding batches), §7 (gotchas).
"""

from __future__ import annotations

import ctypes
import functools
import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import llama_cpp
import numpy as np

from phi4mm.engine import offload
from phi4mm.errors import ConfigError, ConversionError, EngineError

# llama.cpp's log lines go to the "phi4mm.llama_cpp" logger, quiet (errors only) by default.
# (llama-cpp-python's own callback maps ggml's current level enum wrongly and prints warnings.)
LOGGER = logging.getLogger("phi4mm.llama_cpp")
LOGGER.setLevel(logging.ERROR)
_GGML_LEVELS = {1: logging.DEBUG, 2: logging.INFO, 3: logging.WARNING, 4: logging.ERROR}
_last_level = [logging.DEBUG]


@llama_cpp.llama_log_callback
def _log(level: int, text: bytes, _user: ctypes.c_void_p) -> None:
    py_level = _last_level[0] if level == 5 else _GGML_LEVELS.get(level, logging.DEBUG)
    _last_level[0] = py_level
    if LOGGER.isEnabledFor(py_level):
        LOGGER.log(py_level, text.decode("utf-8", "replace").rstrip("\n"))


llama_cpp.llama_log_set(_log, ctypes.c_void_p(0))

FTYPES = {
    "f32": llama_cpp.LLAMA_FTYPE_ALL_F32,
    "f16": llama_cpp.LLAMA_FTYPE_MOSTLY_F16,
    "bf16": llama_cpp.LLAMA_FTYPE_MOSTLY_BF16,
    "q8_0": llama_cpp.LLAMA_FTYPE_MOSTLY_Q8_0,
    "q6_k": llama_cpp.LLAMA_FTYPE_MOSTLY_Q6_K,
    "q5_k_m": llama_cpp.LLAMA_FTYPE_MOSTLY_Q5_K_M,
    "q4_k_m": llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_K_M,
}
_backend_ready = False


def _backend() -> None:
    global _backend_ready
    if not _backend_ready:
        llama_cpp.llama_backend_init()
        _backend_ready = True


def default_threads() -> int:
    return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1))


def system_info() -> str:
    return llama_cpp.llama_print_system_info().decode()


def use_extra_buffers(info: str) -> bool:
    """Whether to let llama.cpp put weights in its CPU "extra" buffer types (AMX, repacked layouts).
    Not in a build with AMX-INT8 kernels (`system_info()` says AMX_INT8 = 1, a CPU such as Xeon
    Sapphire Rapids): there the AMX matmul crashes (SIGSEGV) on the first decode of a Q4_K_M
    decoder, seen with llama-cpp-python 0.3.36 on this project's test checkpoint. Without extra
    buffers the plain CPU kernels run, and give the same logits."""
    return "AMX_INT8 = 1" not in info


def gpu_offload_supported() -> bool:
    """Whether the installed llama.cpp has a GPU backend (CUDA, Metal, Vulkan, ...) with a device."""
    return bool(llama_cpp.llama_supports_gpu_offload())


def devices() -> list[offload.Device]:
    """Every ggml backend device, with its memory now (ggml_backend_dev_*; the bindings do not wrap
    them, so they are bound here against the loaded ggml). Empty when they cannot be bound."""
    ggml = _ggml_devices()
    if ggml is None:
        return []
    found = []
    for i in range(ggml.ggml_backend_dev_count()):
        dev = ggml.ggml_backend_dev_get(i)
        free, total = ctypes.c_size_t(0), ctypes.c_size_t(0)
        ggml.ggml_backend_dev_memory(dev, ctypes.byref(free), ctypes.byref(total))
        kind = ggml.ggml_backend_dev_type(dev)
        found.append(offload.Device(
            name=_text(ggml.ggml_backend_dev_name(dev)), description=_text(ggml.ggml_backend_dev_description(dev)),
            kind=_DEVICE_KINDS[kind] if 0 <= kind < len(_DEVICE_KINDS) else f"type {kind}",
            backend=_text(ggml.ggml_backend_reg_name(ggml.ggml_backend_dev_backend_reg(dev))),
            memory_free_bytes=free.value, memory_total_bytes=total.value))
    return found


def plan_offload(n_gpu_layers: int | None, main_gpu: int | None) -> offload.Plan:
    """What to offload (engine/offload.py) on the GPUs this llama.cpp sees."""
    _backend()
    supported = gpu_offload_supported()
    gpus = offload.offload_devices(devices()) if supported else ()
    return offload.plan(n_gpu_layers, main_gpu, supported, gpus, f"llama-cpp-python=={llama_cpp.__version__}")


_DEVICE_KINDS = ("cpu", "gpu", "igpu", "accel", "meta")  # enum ggml_backend_dev_type, in order
_GGML_SIGNATURES = {  # ggml-backend.h
    "ggml_backend_dev_count": ([], ctypes.c_size_t),
    "ggml_backend_dev_get": ([ctypes.c_size_t], ctypes.c_void_p),
    "ggml_backend_dev_name": ([ctypes.c_void_p], ctypes.c_char_p),
    "ggml_backend_dev_description": ([ctypes.c_void_p], ctypes.c_char_p),
    "ggml_backend_dev_type": ([ctypes.c_void_p], ctypes.c_int),
    "ggml_backend_dev_memory": ([ctypes.c_void_p, ctypes.POINTER(ctypes.c_size_t), ctypes.POINTER(ctypes.c_size_t)],
                                None),
    "ggml_backend_dev_backend_reg": ([ctypes.c_void_p], ctypes.c_void_p),
    "ggml_backend_reg_name": ([ctypes.c_void_p], ctypes.c_char_p),
}


class _Functions:
    """The ggml functions above, each found in ggml or ggml-base (Windows looks in one DLL only)."""

    def __init__(self, libraries: list[ctypes.CDLL]):
        for name, (argtypes, restype) in _GGML_SIGNATURES.items():
            function = next(getattr(lib, name) for lib in libraries if hasattr(lib, name))
            function.argtypes, function.restype = argtypes, restype
            setattr(self, name, function)


@functools.cache
def _ggml_devices() -> _Functions | None:
    """The device functions, bound once against the ggml llama.cpp itself loaded (so with
    $LLAMA_CPP_LIB_PATH too): reached through libllama (Linux, macOS), else in the ggml libraries
    next to it (Windows). None, with a warning, when that cannot be done."""
    try:
        from llama_cpp import _ctypes_extensions
        from llama_cpp import llama_cpp as bindings

        libraries = [bindings._lib]
        for name in ("ggml", "ggml-base"):
            try:
                libraries.append(_ctypes_extensions.load_shared_library(name, bindings._base_path))
            except (OSError, RuntimeError):
                pass  # not there under that name: libllama's dependencies are searched first anyway
        return _Functions(libraries)
    except (ImportError, AttributeError, OSError, RuntimeError, StopIteration) as exc:
        LOGGER.warning("cannot list llama.cpp's devices (%s): GPUs are reported without names", exc)
        return None


def _text(value: bytes | None) -> str:
    return value.decode("utf-8", "replace") if value else ""


def quantize_model(src: Path, dst: Path, quant: str, n_threads: int) -> None:
    """llama.cpp's own `llama_model_quantize` (llamacpp-notes §3): src GGUF -> dst GGUF of `quant`."""
    _backend()
    params = llama_cpp.llama_model_quantize_default_params()
    params.nthread = n_threads
    params.ftype = FTYPES[quant]
    rc = llama_cpp.llama_model_quantize(str(src).encode(), str(dst).encode(), ctypes.byref(params))
    if rc != 0:
        raise ConversionError(f"llama_model_quantize({src.name} -> {quant}) failed with status {rc}")


class Model:
    """A loaded text decoder (`llama_model *`), its vocabulary and where its layers are (`offload`):
    `n_gpu_layers` and `main_gpu` as in engine/offload.py's `plan`."""

    def __init__(self, path: Path, use_mmap: bool = False, n_gpu_layers: int | None = None,
                 main_gpu: int | None = None):
        self.plan = plan_offload(n_gpu_layers, main_gpu)
        params = llama_cpp.llama_model_default_params()
        params.load_mode = llama_cpp.LLAMA_LOAD_MODE_MMAP if use_mmap else llama_cpp.LLAMA_LOAD_MODE_NONE
        params.use_extra_bufts = use_extra_buffers(system_info())
        params.n_gpu_layers = self.plan.n_gpu_layers
        if self.plan.main_gpu is not None:  # this GPU alone; otherwise the layers are split over every GPU
            params.split_mode = llama_cpp.LLAMA_SPLIT_MODE_NONE
            params.main_gpu = self.plan.main_gpu
        self.ptr = llama_cpp.llama_model_load_from_file(str(path).encode(), params)
        if not self.ptr:
            raise ConfigError(f"llama.cpp could not load {path} as a text decoder GGUF", key=str(path))
        self.offload = self.plan.placed(llama_cpp.llama_model_n_layer(self.ptr))
        n_head = llama_cpp.llama_model_n_head(self.ptr)
        head_dim = llama_cpp.llama_model_n_embd(self.ptr) // max(n_head, 1)
        # f16 K and V (llama.cpp's default cache type) of every layer's KV heads: bytes per KV cell
        self.kv_bytes_per_cell = 2 * 2 * llama_cpp.llama_model_n_layer(self.ptr) * \
            llama_cpp.llama_model_n_head_kv(self.ptr) * head_dim
        self.vocab = llama_cpp.llama_model_get_vocab(self.ptr)
        self.n_vocab = llama_cpp.llama_vocab_n_tokens(self.vocab)
        self.n_embd = llama_cpp.llama_model_n_embd_inp(self.ptr)
        self.n_ctx_train = llama_cpp.llama_model_n_ctx_train(self.ptr)
        self._pieces: dict[int, bytes] = {}

    def meta(self, key: str) -> str | None:
        buf = ctypes.create_string_buffer(4096)
        n = llama_cpp.llama_model_meta_val_str(self.ptr, key.encode(), buf, len(buf))
        return buf.value.decode() if n >= 0 else None

    def tokenize(self, text: str) -> list[int]:
        """Text -> token ids, special tokens parsed (as the HF processor does), no BOS (spec §8)."""
        data = text.encode()
        n_max = len(data) + 8
        out = (llama_cpp.llama_token * n_max)()
        n = llama_cpp.llama_tokenize(self.vocab, data, len(data), out, n_max, False, True)
        if n < 0:
            raise EngineError(f"llama_tokenize needed {-n} slots, had {n_max}")
        return list(out[:n])

    def piece(self, token: int) -> bytes:
        """The bytes a token renders to; control tokens render empty."""
        cached = self._pieces.get(token)
        if cached is None:
            buf = ctypes.create_string_buffer(256)
            n = llama_cpp.llama_token_to_piece(self.vocab, token, buf, len(buf), 0, False)
            cached = buf.raw[:max(n, 0)]
            self._pieces[token] = cached
        return cached

    def is_eog(self, token: int) -> bool:
        return bool(llama_cpp.llama_vocab_is_eog(self.vocab, token))

    def close(self) -> None:
        if self.ptr:
            llama_cpp.llama_model_free(self.ptr)
            self.ptr = None

    def __enter__(self) -> Model:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Adapter:
    """A GGUF LoRA adapter (`llama_adapter_lora *`), owned by its model."""

    def __init__(self, model: Model, path: Path):
        self.path = path
        self.ptr = llama_cpp.llama_adapter_lora_init(model.ptr, str(path).encode())
        if not self.ptr:
            raise ConfigError(f"llama.cpp could not load the LoRA adapter {path}", key=str(path))

    def close(self) -> None:
        if self.ptr:
            llama_cpp.llama_adapter_lora_free(self.ptr)
            self.ptr = None


StopCheck = Callable[[], bool]


@dataclass(frozen=True)
class ContextSettings:
    n_ctx: int                  # cells per sequence
    n_batch: int = 512
    n_threads: int = 0          # 0: all cores available to this process
    flash_attn: bool | None = None  # None: llama.cpp decides
    n_seq: int = 1              # sequences, each with its own n_ctx cells (llama.cpp's KV streams)


@dataclass(frozen=True)
class TokenRow:
    token: int
    pos: int
    seq: int
    logits: bool = False


@dataclass(frozen=True)
class EmbeddingRun:
    rows: np.ndarray    # (n, n_embd) float32
    pos0: int
    seq: int


class Context:
    """A `llama_context *` holding `n_seq` sequences, each in its own KV stream of n_ctx cells
    (so the per-sequence size, which picks the LongRoPE factors, is exactly n_ctx), with
    reusable token and embedding batches. One batch may hold rows of several sequences."""

    def __init__(self, model: Model, settings: ContextSettings):
        params = llama_cpp.llama_context_default_params()
        threads = settings.n_threads or default_threads()
        params.n_ctx = settings.n_ctx * settings.n_seq
        params.n_batch = params.n_ubatch = settings.n_batch
        params.n_seq_max = settings.n_seq
        params.kv_unified = False
        params.n_threads = params.n_threads_batch = threads
        if settings.flash_attn is not None:
            params.flash_attn_type = (llama_cpp.LLAMA_FLASH_ATTN_TYPE_ENABLED if settings.flash_attn
                                      else llama_cpp.LLAMA_FLASH_ATTN_TYPE_DISABLED)
        self.model = model
        self.ptr = llama_cpp.llama_init_from_model(model.ptr, params)
        if not self.ptr:
            raise EngineError(f"llama.cpp could not create a context of {settings.n_seq} x {settings.n_ctx} tokens")
        self.n_seq = settings.n_seq
        self.n_ctx_seq = llama_cpp.llama_n_ctx_seq(self.ptr)
        if self.n_ctx_seq != settings.n_ctx:  # the LongRoPE factor choice depends on it (notes §1.3)
            self.close()
            raise EngineError(f"llama.cpp made {self.n_ctx_seq} cells per sequence, asked for {settings.n_ctx}")
        self.n_batch = settings.n_batch
        self._memory = llama_cpp.llama_get_memory(self.ptr)
        self._tokens = llama_cpp.llama_batch_init(self.n_batch, 0, 1)
        self._embd = llama_cpp.llama_batch_init(self.n_batch, model.n_embd, 1)
        self._adapters: tuple[tuple[int, float], ...] = ()

    def set_adapters(self, adapters: Sequence[tuple[Adapter, float]]) -> bool:
        """Make exactly these adapters active for the next decodes; True if the set changed.
        KV computed under another set stays in its cells: callers never reuse it (notes §4.3)."""
        key = tuple((ctypes.cast(a.ptr, ctypes.c_void_p).value or 0, s) for a, s in adapters)
        if key == self._adapters:
            return False
        n = len(adapters)
        if n:
            ptrs = (llama_cpp.llama_adapter_lora_p_ctypes * n)(*[a.ptr for a, _ in adapters])
            scales = (ctypes.c_float * n)(*[s for _, s in adapters])
            rc = llama_cpp.llama_set_adapters_lora(self.ptr, ptrs, n, scales)
        else:
            rc = llama_cpp.llama_set_adapters_lora(self.ptr, None, 0, None)
        if rc != 0:
            raise EngineError(f"llama_set_adapters_lora failed with status {rc}")
        self._adapters = key
        return True

    def truncate(self, seq: int, n_keep: int) -> None:
        """Drop sequence `seq`'s KV entries from position n_keep on (0 empties it)."""
        if not llama_cpp.llama_memory_seq_rm(self._memory, seq, n_keep, -1):
            raise EngineError(f"llama_memory_seq_rm could not drop positions from {n_keep} of sequence {seq}")

    def decode_tokens(self, rows: Sequence[TokenRow]) -> None:
        """One llama_decode of at most n_batch token rows (of any sequences)."""
        if len(rows) > self.n_batch:
            raise EngineError(f"{len(rows)} token rows exceed the batch of {self.n_batch}")
        b = self._tokens
        for i, row in enumerate(rows):
            b.token[i] = row.token
            b.pos[i] = row.pos
            b.n_seq_id[i] = 1
            b.seq_id[i][0] = row.seq
            b.logits[i] = int(row.logits)
        b.n_tokens = len(rows)
        self._decode(b)

    def decode_embeddings(self, runs: Sequence[EmbeddingRun]) -> None:
        """One llama_decode of at most n_batch float32 embedding rows (of any sequences); no
        logits (notes §5: a batch is either tokens or embeddings)."""
        b, i = self._embd, 0
        for run in runs:
            rows = np.ascontiguousarray(run.rows, dtype=np.float32)
            if rows.ndim != 2 or rows.shape[1] != self.model.n_embd:
                raise EngineError(f"embedding rows have shape {rows.shape}, expected (n, {self.model.n_embd})")
            if i + rows.shape[0] > self.n_batch:
                raise EngineError(f"{i + rows.shape[0]} embedding rows exceed the batch of {self.n_batch}")
            ctypes.memmove(ctypes.addressof(b.embd.contents) + i * rows.shape[1] * 4, rows.ctypes.data, rows.nbytes)
            for j in range(rows.shape[0]):
                b.pos[i + j] = run.pos0 + j
                b.n_seq_id[i + j] = 1
                b.seq_id[i + j][0] = run.seq
                b.logits[i + j] = 0
            i += rows.shape[0]
        b.n_tokens = i
        self._decode(b)

    def _decode(self, batch: llama_cpp.llama_batch) -> None:
        rc = llama_cpp.llama_decode(self.ptr, batch)
        if rc != 0:
            raise EngineError(f"llama_decode failed with status {rc} ({batch.n_tokens} rows)")

    def logits(self, index: int) -> np.ndarray:
        """float32 (n_vocab,) copy of the logits of row `index` of the last batch decoded."""
        ptr = llama_cpp.llama_get_logits_ith(self.ptr, index)
        if not ptr:
            raise EngineError(f"no logits for batch row {index}: the last decode did not request them")
        return np.ctypeslib.as_array(ptr, shape=(self.model.n_vocab,)).copy()

    def close(self) -> None:
        if self.ptr:
            if hasattr(self, "_tokens"):
                llama_cpp.llama_batch_free(self._tokens)
                llama_cpp.llama_batch_free(self._embd)
            llama_cpp.llama_free(self.ptr)
            self.ptr = None


@dataclass(frozen=True)
class SamplerSettings:
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    min_p: float = 0.0
    repeat_penalty: float = 1.0
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0
    penalty_last_n: int = 64
    seed: int | None = None
    grammar: str | None = None  # GBNF, root rule "root"


class Sampler:
    """A llama.cpp sampler chain: grammar, penalties, top-k, top-p, min-p, temperature, draw."""

    def __init__(self, model: Model, s: SamplerSettings):
        self.ptr = llama_cpp.llama_sampler_chain_init(llama_cpp.llama_sampler_chain_default_params())
        if s.grammar is not None:
            grammar = llama_cpp.llama_sampler_init_grammar(model.vocab, s.grammar.encode(), b"root")
            if not grammar:
                self.close()
                raise EngineError("llama.cpp rejected the generated grammar")
            self._add(grammar)
        if s.repeat_penalty != 1.0 or s.frequency_penalty or s.presence_penalty:
            self._add(llama_cpp.llama_sampler_init_penalties(
                model.n_vocab, s.penalty_last_n, s.repeat_penalty, s.frequency_penalty, s.presence_penalty))
        if s.temperature <= 0.0:
            self._add(llama_cpp.llama_sampler_init_greedy())
            return
        if s.top_k > 0:
            self._add(llama_cpp.llama_sampler_init_top_k(s.top_k))
        if s.top_p < 1.0:
            self._add(llama_cpp.llama_sampler_init_top_p(s.top_p, 1))
        if s.min_p > 0.0:
            self._add(llama_cpp.llama_sampler_init_min_p(s.min_p, 1))
        self._add(llama_cpp.llama_sampler_init_temp(s.temperature))
        seed = llama_cpp.LLAMA_DEFAULT_SEED if s.seed is None else s.seed & 0xFFFFFFFF
        self._add(llama_cpp.llama_sampler_init_dist(seed))

    def _add(self, sampler: object) -> None:
        llama_cpp.llama_sampler_chain_add(self.ptr, sampler)

    def sample(self, ctx: Context, index: int) -> int:
        """Draw the next token from the logits of row `index` of the last batch and record it
        (penalties, grammar)."""
        return int(llama_cpp.llama_sampler_sample(self.ptr, ctx.ptr, index))

    def close(self) -> None:
        if self.ptr:
            llama_cpp.llama_sampler_free(self.ptr)
            self.ptr = None


def json_grammar(schema: dict | None) -> str:
    """GBNF for any JSON object (schema None) or for a JSON schema, via llama.cpp's converter."""
    from llama_cpp import llama_grammar

    if schema is None:
        return llama_grammar.JSON_GBNF
    import json

    return llama_grammar.json_schema_to_gbnf(json.dumps(schema))
