"""`phi4mm serve`: find (download, convert) the model with progress, then serve it."""

from __future__ import annotations

import argparse

from phi4mm import store
from phi4mm.engine import llama
from phi4mm.progress import ProgressPrinter
from phi4mm.server.app import serve
from phi4mm.server.settings import settings_from_args


def serve_from_args(args: argparse.Namespace) -> int:
    """Locate first, outside uvicorn, so a missing model (or a GPU that is not there) is a clean CLI
    error, not a traceback."""
    files = store.locate(args.model, args.quant, progress=ProgressPrinter(), n_threads=args.threads)
    settings = settings_from_args(args, model_dir=files.root)
    llama.plan_offload(settings.gpu_layers, settings.main_gpu)  # InputError for a --main-gpu llama.cpp lacks
    serve(settings)
    return 0
