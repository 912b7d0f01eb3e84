"""`phi4mm` command line: convert | serve | run | transcribe. Each command's flags and body live in
their own module (convert, chat, transcribe, and the server's settings); this one only dispatches."""

from __future__ import annotations

import argparse
import sys

from phi4mm.errors import ConfigError, ModelNotFoundError, Phi4MMError


def _convert(args: argparse.Namespace) -> int:
    from phi4mm.cli.convert import convert_from_args

    return convert_from_args(args)


def _serve(args: argparse.Namespace) -> int:
    try:
        from phi4mm.server.main import serve_from_args
    except ImportError as exc:
        if exc.name not in ("starlette", "uvicorn"):
            raise
        raise ConfigError(f"`phi4mm serve` needs {exc.name}: pip install 'phi4mm[server]'") from None
    if args.replicas is None:
        return serve_from_args(args)
    try:
        from phi4mm.cluster.launch import serve_replicas
    except ImportError as exc:
        if exc.name is None or exc.name.split(".")[0] != "ray":
            raise
        raise ConfigError("`phi4mm serve --replicas` needs Ray Serve: pip install 'phi4mm[ray]'") from None
    return serve_replicas(args)


def _add_serve_arguments(parser: argparse.ArgumentParser) -> None:
    from phi4mm.cluster.scaling import add_replica_arguments
    from phi4mm.server.settings import add_serve_arguments

    add_serve_arguments(parser)
    add_replica_arguments(parser)


def _run(args: argparse.Namespace) -> int:
    from phi4mm.cli.chat import run_from_args

    return run_from_args(args)


def _transcribe(args: argparse.Namespace) -> int:
    from phi4mm.cli.transcribe import transcribe_from_args

    return transcribe_from_args(args)


def build_parser() -> argparse.ArgumentParser:
    from phi4mm.cli.chat import add_run_arguments
    from phi4mm.cli.convert import add_convert_arguments
    from phi4mm.cli.transcribe import add_transcribe_arguments

    parser = argparse.ArgumentParser(prog="phi4mm", description="Phi-4-multimodal-instruct on llama.cpp")
    sub = parser.add_subparsers(dest="command", required=True)
    commands = (
        ("convert", "convert a hub checkpoint (directory or repo id) to GGUF files", add_convert_arguments, _convert),
        ("serve", "serve the model with an OpenAI-compatible HTTP API", _add_serve_arguments, _serve),
        ("run", "answer one prompt (streaming), or chat interactively", add_run_arguments, _run),
        ("transcribe", "transcribe or translate an audio file of any length", add_transcribe_arguments,
         _transcribe),
    )
    for name, help_text, add_arguments, func in commands:
        command = sub.add_parser(name, help=help_text)
        add_arguments(command)
        command.set_defaults(func=func)
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
