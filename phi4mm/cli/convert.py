"""`phi4mm convert SRC OUT_DIR`: a hub checkpoint (directory or repo id) to GGUF files, with progress."""

from __future__ import annotations

import argparse
from pathlib import Path

from phi4mm import keys, store


def add_convert_arguments(parser: argparse.ArgumentParser) -> None:
    add = parser.add_argument
    add("src", help="hub-layout directory or hub repo id, e.g. microsoft/Phi-4-multimodal-instruct")
    add("out_dir", help="directory to write the GGUF files and manifest.json into")
    add("--quant", choices=keys.QUANTS, default=store.DEFAULT_QUANT,
        help=f"text decoder type (default {store.DEFAULT_QUANT})")
    add("--encoder-type", choices=keys.ENCODER_TYPES, default="f16", help="vision/audio encoder weights (default f16)")
    add("--threads", type=int, default=0, help="quantizer threads (default: all cores)")
    add("--revision", default=None, help="hub revision (branch, tag or commit)")


def convert_from_args(args: argparse.Namespace) -> int:
    from phi4mm.converter.convert import convert
    from phi4mm.progress import ProgressPrinter

    manifest = convert(args.src, Path(args.out_dir), quant=args.quant, encoder_type=args.encoder_type,
                       n_threads=args.threads, progress=ProgressPrinter(), revision=args.revision)
    for role, entry in manifest["files"].items():
        print(f"{role:12s} {entry['name']} ({entry['bytes'] / 1e6:.1f} MB)")
    print(f"converted in {manifest['seconds']} s into {args.out_dir}")
    return 0
