"""The `phi4mm` command line: `main` dispatches to one module per command (convert, chat for `run`,
transcribe; `serve` lives in phi4mm.server); `loading` holds what run and transcribe share."""

from phi4mm.cli.main import build_parser, main

__all__ = ["build_parser", "main"]
