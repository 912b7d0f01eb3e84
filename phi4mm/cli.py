"""`phi4mm` command line: convert | serve | run."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from phi4mm.errors import Phi4MMError

QUANTS = ("f32", "f16", "bf16", "q8_0", "q6_k", "q5_k_m", "q4_k_m")


def _convert(args: argparse.Namespace) -> int:
    from phi4mm.converter.convert import convert
    from phi4mm.progress import ProgressPrinter

    manifest = convert(args.src, Path(args.out_dir), quant=args.quant, encoder_type=args.encoder_type,
                       n_threads=args.threads, progress=ProgressPrinter(), revision=args.revision)
    for role, entry in manifest["files"].items():
        print(f"{role:12s} {entry['name']} ({entry['bytes'] / 1e6:.1f} MB)")
    print(f"converted in {manifest['seconds']} s into {args.out_dir}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="phi4mm", description="Phi-4-multimodal-instruct on llama.cpp")
    sub = parser.add_subparsers(dest="command", required=True)
    conv = sub.add_parser("convert", help="convert a hub checkpoint (directory or repo id) to GGUF files")
    conv.add_argument("src", help="hub-layout directory or hub repo id, e.g. microsoft/Phi-4-multimodal-instruct")
    conv.add_argument("out_dir", help="directory to write the GGUF files and manifest.json into")
    conv.add_argument("--quant", choices=QUANTS, default="q4_k_m", help="text decoder type (default q4_k_m)")
    conv.add_argument("--encoder-type", choices=("f16", "f32"), default="f16",
                      help="vision/audio encoder weights (default f16)")
    conv.add_argument("--threads", type=int, default=0, help="quantizer threads (default: all cores)")
    conv.add_argument("--revision", default=None, help="hub revision (branch, tag or commit)")
    conv.set_defaults(func=_convert)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except Phi4MMError as exc:
        print(f"phi4mm: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("phi4mm: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
