"""`phi4mm` command line: convert | serve | run | transcribe."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from phi4mm.errors import ConfigError, ModelNotFoundError, Phi4MMError

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


def _serve(args: argparse.Namespace) -> int:
    try:
        from phi4mm.server.main import serve_from_args
    except ImportError as exc:
        if exc.name not in ("starlette", "uvicorn"):
            raise
        raise ConfigError(f"`phi4mm serve` needs {exc.name}: pip install 'phi4mm[server]'") from None
    return serve_from_args(args)


def _run(args: argparse.Namespace) -> int:
    from phi4mm.chat_cli import run_from_args

    return run_from_args(args)


def _transcribe(args: argparse.Namespace) -> int:
    from phi4mm.transcribe_cli import transcribe_from_args

    return transcribe_from_args(args)


def build_parser() -> argparse.ArgumentParser:
    from phi4mm.chat_cli import add_run_arguments
    from phi4mm.server.settings import add_serve_arguments
    from phi4mm.transcribe_cli import add_transcribe_arguments

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
    serve = sub.add_parser("serve", help="serve the model with an OpenAI-compatible HTTP API")
    add_serve_arguments(serve)
    serve.set_defaults(func=_serve)
    run = sub.add_parser("run", help="answer one prompt (streaming), or chat interactively")
    add_run_arguments(run)
    run.set_defaults(func=_run)
    transcribe = sub.add_parser("transcribe", help="transcribe or translate an audio file of any length")
    add_transcribe_arguments(transcribe)
    transcribe.set_defaults(func=_transcribe)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except Phi4MMError as exc:
        print(f"phi4mm: error: {exc}", file=sys.stderr)
        if isinstance(exc, ModelNotFoundError) and hasattr(args, "model"):
            print(f"phi4mm: pass `--model DIR` (a hub-layout checkpoint directory, or one written by "
                  f"`phi4mm convert SRC DIR`) to `phi4mm {args.command}`", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("phi4mm: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
