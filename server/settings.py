"""Server settings: one frozen dataclass built from the `phi4mm serve` flags. No starlette here, so
the CLI can build its parser without the server extra installed."""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass, field
from pathlib import Path

from phi4mm.errors import ConfigError
from phi4mm.flags import add_device_arguments
from phi4mm.media import MediaLimits
from phi4mm.store import DEFAULT_MODEL, DEFAULT_QUANT

API_KEY_ENV = "PHI4MM_API_KEY"


@dataclass(frozen=True)
class ServerSettings:
    model: str = DEFAULT_MODEL          # what --model named; also the served model name
    model_dir: Path | None = None       # the converted directory to load (None: locate `model`)
    quant: str | None = None            # None: the directory's own, or q4_k_m when converting
    host: str = "127.0.0.1"
    port: int = 1234
    n_ctx: int = 8192
    n_threads: int = 0                  # 0: all cores
    api_key: str | None = None          # None: no authentication
    media_limits: MediaLimits = field(default_factory=lambda: server_media_limits(False, ()))
    max_queue: int = 16                 # requests waiting for a free sequence slot
    parallel: int = 2                   # sequences decoded together (README, Serving several users)
    prefill_chunk: int = 8              # prompt rows per step while other streams are decoding
    max_queued_media_mb: int = 1024     # decoded media held by waiting requests
    max_body_bytes: int = 32 << 20
    dynamic_hd: int | None = None
    shutdown_timeout_s: float = 10.0    # in-flight requests get this long, then are cancelled
    warmup: bool = True                 # one decode at start-up
    ui: bool = True                     # the chat page at / (--no-ui: API only)
    media_workers: int = 2              # decoder processes for request media (0: decode in the server)
    media_deadline_s: float = 30.0      # one decode's wall time, then its worker is stopped
    media_worker_memory_mb: int = 2048  # address space a decoder may add to its imports'
    gpu_layers: int | None = None       # decoder layers on the GPU; None: all when llama.cpp has a GPU backend
    main_gpu: int | None = None         # the GPU holding the whole decoder; None: split over every GPU
    encoder_device: str = "cpu"         # where the image and audio encoders run: cpu or cuda
    kv_budget_mb: int | None = None     # KV of every context together; None: the engine's default

    def __post_init__(self):
        for name, least in (("max_queue", 0), ("max_body_bytes", 1), ("port", 0), ("n_ctx", 16), ("parallel", 1),
                            ("prefill_chunk", 1), ("max_queued_media_mb", 0), ("media_workers", 0),
                            ("media_deadline_s", 1e-3), ("media_worker_memory_mb", 16)):
            if getattr(self, name) < least:
                raise ConfigError(f"{name} is {getattr(self, name)}, expected >= {least}", key=name)
        for name, least in (("gpu_layers", -1), ("main_gpu", 0), ("kv_budget_mb", 1)):
            if getattr(self, name) is not None and getattr(self, name) < least:
                raise ConfigError(f"{name} is {getattr(self, name)}, expected >= {least} or none", key=name)


def server_media_limits(allow_private_urls: bool, allowed_dirs: tuple[Path, ...],
                        max_audio_bytes: int = MediaLimits.max_audio_bytes,
                        max_audio_s: float = MediaLimits.max_audio_s) -> MediaLimits:
    """HTTP clients may read local files only inside `allowed_dirs` (none: no local files)."""
    return MediaLimits(allow_private_urls=allow_private_urls, allow_local_files=bool(allowed_dirs),
                       allowed_dirs=allowed_dirs, max_audio_bytes=max_audio_bytes, max_audio_s=max_audio_s)


def add_serve_arguments(parser: argparse.ArgumentParser) -> None:
    """The `phi4mm serve` flags."""
    add = parser.add_argument
    add("--model", default=DEFAULT_MODEL, help=f"hub repo id, hub-layout or converted directory "
        f"(default {DEFAULT_MODEL})")
    add("--quant", default=None, help=f"text decoder type when converting (default {DEFAULT_QUANT})")
    add("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    add("--port", type=int, default=1234, help="port (default 1234)")
    add("--n-ctx", type=int, default=8192, help="context window in tokens (default 8192)")
    add("--threads", type=int, default=0, help="CPU threads (default: all cores)")
    add("--api-key", default=os.environ.get(API_KEY_ENV),
        help=f"require 'Authorization: Bearer KEY' (default: ${API_KEY_ENV}, else no key)")
    add("--allow-private-urls", action="store_true",
        help="let image URLs reach loopback, private and link-local addresses")
    add("--allowed-media-dir", action="append", default=[], metavar="DIR",
        help="directory whose files requests may name as images (repeatable; default none)")
    add("--parallel", type=int, default=2, help="sequences decoded together, each with its own KV cells "
        "(default 2; README: Serving several users)")
    add("--prefill-chunk", type=int, default=8, help="prompt rows per step while other streams are "
        "decoding (default 8): smaller keeps their tokens flowing, larger finishes prompts sooner")
    add("--max-queue", type=int, default=16, help="requests waiting for a free slot (default 16)")
    add("--max-queued-media-mb", type=int, default=1024,
        help="decoded images and audio held by waiting requests, in MiB (default 1024)")
    add("--max-body-mb", type=float, default=32.0, help="largest request body in MB (default 32)")
    add("--max-audio-mb", type=float, default=MediaLimits.max_audio_bytes / (1 << 20),
        help="largest encoded audio clip in MB (default 50; uploads are also bound by --max-body-mb)")
    add("--max-audio-s", type=float, default=MediaLimits.max_audio_s,
        help="longest audio clip in seconds (default 1800)")
    add("--dynamic-hd", type=int, default=None, help="most image crops (default: the model's, 36)")
    add("--no-ui", dest="ui", action="store_false", help="don't serve the chat page at /")
    add("--media-workers", type=int, default=2, help="processes that decode request images and audio, "
        "each under the limits below (default 2; 0 decodes inside the server process)")
    add("--media-deadline-s", type=float, default=30.0, help="longest one decode may take before its "
        "worker is stopped and the request answered 400 (default 30)")
    add("--media-worker-memory-mb", type=int, default=2048, help="memory a decoder process may take "
        "for one decode, past what it starts with (default 2048)")
    add_device_arguments(parser)
    add("--kv-budget-mb", type=int, default=None, metavar="MB", help="KV memory of every context "
        "together (one per adapter set and LongRoPE factor set); past it requests wait (default: room "
        "for a short context per adapter set and a long one beside a short one; README: Serving several users)")


def settings_from_args(args: argparse.Namespace, model_dir: Path | None = None) -> ServerSettings:
    dirs = tuple(Path(d).expanduser().resolve() for d in args.allowed_media_dir)
    return ServerSettings(
        model=args.model, model_dir=model_dir, quant=args.quant, host=args.host, port=args.port,
        n_ctx=args.n_ctx, n_threads=args.threads, api_key=args.api_key or None,
        media_limits=server_media_limits(args.allow_private_urls, dirs, int(args.max_audio_mb * (1 << 20)),
                                         args.max_audio_s),
        max_queue=args.max_queue, parallel=args.parallel, prefill_chunk=args.prefill_chunk,
        max_queued_media_mb=args.max_queued_media_mb, max_body_bytes=int(args.max_body_mb * (1 << 20)),
        dynamic_hd=args.dynamic_hd, ui=args.ui, media_workers=args.media_workers,
        media_deadline_s=args.media_deadline_s, media_worker_memory_mb=args.media_worker_memory_mb,
        gpu_layers=args.gpu_layers, main_gpu=args.main_gpu, encoder_device=args.encoder_device,
        kv_budget_mb=args.kv_budget_mb)
