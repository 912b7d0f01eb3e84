"""`phi4mm run`: answer one prompt (optionally about images and audio clips), streaming tokens to
the terminal, or chat interactively with history: `/image PATH` and `/audio PATH` attach media to
the next message, `/reset` clears the history, `/quit` exits."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TextIO

from phi4mm.cli.loading import add_model_arguments, load_model
from phi4mm.errors import InputError

HELP = ("/image PATH or /audio PATH attaches an image or an audio clip to your next message, "
        "/reset clears the history, /quit exits")
Attachment = tuple[str, Path]  # ("image" or "audio", file)


def add_run_arguments(parser: argparse.ArgumentParser) -> None:
    add = parser.add_argument
    add("prompt", nargs="?", help="answer this and exit (default: interactive chat)")
    add("--image", action="append", default=[], metavar="PATH", help="image file (repeatable)")
    add("--audio", action="append", default=[], metavar="PATH",
        help="audio file: wav, mp3, flac, ogg, m4a, webm ... (repeatable)")
    add("--system", default=None, help="system message")
    add_model_arguments(parser, n_ctx=8192, n_ctx_help="default 8192")
    add("--max-tokens", type=int, default=None, help="most tokens per answer (default: no limit)")
    add("--temperature", type=float, default=None, help="sampling temperature (default 0.8)")
    add("--top-p", type=float, default=None)
    add("--top-k", type=int, default=None)
    add("--seed", type=int, default=None)
    add("--dynamic-hd", type=int, default=None, help="most image crops (default: the model's)")


def run_from_args(args: argparse.Namespace) -> int:
    model = load_model(args)
    with model:
        attached = [("image", Path(p)) for p in args.image] + [("audio", Path(p)) for p in args.audio]
        if args.prompt is not None:
            Chat(model, args).ask(args.prompt, attached)
            return 0
        return interactive(Chat(model, args), attached)


class Chat:
    """A conversation: the history and the sampling settings from the flags."""

    def __init__(self, model, args: argparse.Namespace, out: TextIO = sys.stdout):
        self.model = model
        self.out = out
        self.system = args.system
        self.options = {"max_tokens": args.max_tokens, "temperature": args.temperature,
                        "top_p": args.top_p, "top_k": args.top_k, "seed": args.seed}
        self.history: list[dict] = []
        self.reset()

    def reset(self) -> None:
        self.history = [{"role": "system", "content": self.system}] if self.system else []

    def ask(self, text: str, attached: list[Attachment]) -> str:
        """Stream the answer to `out`; the turn joins the history only if it succeeded."""
        parts = [{"type": kind, kind: path} for kind, path in attached] + [{"type": "text", "text": text}]
        messages = self.history + [{"role": "user", "content": parts}]
        pieces = []
        for chunk in self.model.create_chat_completion(messages, stream=True, **self.options):
            piece = chunk["choices"][0]["delta"].get("content") or ""
            self.out.write(piece)
            self.out.flush()
            pieces.append(piece)
        self.out.write("\n")
        answer = "".join(pieces)
        self.history = messages + [{"role": "assistant", "content": answer}]
        return answer


def interactive(chat: Chat, attached: list[Attachment], stdin: TextIO = sys.stdin) -> int:
    print(f"phi4mm chat: {HELP}", file=sys.stderr)
    pending = list(attached)
    while (line := _read_line(stdin)) is not None:
        command, _, rest = line.strip().partition(" ")
        if command in ("/quit", "/exit"):
            break
        if command == "/reset":
            chat.reset()
            pending = []
        elif command in ("/image", "/audio"):
            pending += _attach(command[1:], rest.strip())
        elif line.strip():
            pending = _turn(chat, line.strip(), pending)
    return 0


def _read_line(stdin: TextIO) -> str | None:
    if stdin.isatty():
        try:
            return input(">>> ")
        except EOFError:
            return None
    line = stdin.readline()
    return line or None


def _attach(kind: str, path: str) -> list[Attachment]:
    if not path or not Path(path).expanduser().is_file():
        print(f"phi4mm: /{kind} needs an existing file, got {path!r}", file=sys.stderr)
        return []
    print(f"phi4mm: {path} attached to your next message", file=sys.stderr)
    return [(kind, Path(path).expanduser())]


def _turn(chat: Chat, text: str, attached: list[Attachment]) -> list[Attachment]:
    """Ask; on a request error report it and keep the attachments for the next try."""
    try:
        chat.ask(text, attached)
    except InputError as exc:
        print(f"phi4mm: error: {exc}", file=sys.stderr)
        return attached
    return []


def build_run_args(argv: list[str]) -> argparse.Namespace:
    """The `phi4mm run` flags parsed on their own (for scripts and tests)."""
    parser = argparse.ArgumentParser(prog="phi4mm run")
    add_run_arguments(parser)
    return parser.parse_args(argv)
