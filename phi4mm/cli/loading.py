"""What `phi4mm run` and `phi4mm transcribe` share: the flags that pick and load a model, and loading
it with progress on stderr."""

from __future__ import annotations

import argparse
import sys
import time
import warnings

from phi4mm import store
from phi4mm.errors import OffloadWarning
from phi4mm.flags import add_device_arguments


def add_model_arguments(parser: argparse.ArgumentParser, n_ctx: int, n_ctx_help: str) -> None:
    """--model, --quant, --n-ctx (default `n_ctx`), --threads, --gpu-layers, --main-gpu and
    --encoder-device."""
    add = parser.add_argument
    add("--model", default=store.DEFAULT_MODEL, help="hub repo id, hub-layout or converted "
        f"directory (default {store.DEFAULT_MODEL})")
    add("--quant", default=None, help=f"text decoder type when converting (default {store.DEFAULT_QUANT})")
    add("--n-ctx", type=int, default=n_ctx, help=f"context window in tokens ({n_ctx_help})")
    add("--threads", type=int, default=0, help="CPU threads (default: all cores)")
    add_device_arguments(parser)


def load_model(args: argparse.Namespace):
    """Locate (download, convert) with progress, then load; both reported on stderr, with where
    the decoder went and any offload warning."""
    from phi4mm.api import Phi4MM
    from phi4mm.progress import ProgressPrinter

    files = store.locate(args.model, args.quant, progress=ProgressPrinter(), n_threads=args.threads)
    started = time.perf_counter()
    print(f"phi4mm: loading {files.root} ...", file=sys.stderr, flush=True)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", OffloadWarning)
        model = Phi4MM.from_pretrained(files.root, n_ctx=args.n_ctx, n_threads=args.threads,
                                       dynamic_hd=getattr(args, "dynamic_hd", None), n_gpu_layers=args.gpu_layers,
                                       main_gpu=args.main_gpu, encoder_device=args.encoder_device)
    for warning in caught:
        print(f"phi4mm: warning: {warning.message}", file=sys.stderr, flush=True)
    print(f"phi4mm: {model.offload.describe()}", file=sys.stderr, flush=True)
    print(f"phi4mm: loaded in {time.perf_counter() - started:.1f} s", file=sys.stderr, flush=True)
    return model
