"""`phi4mm transcribe FILE`: transcribe (or translate) an audio file of any length, one progress
line per window on stderr, the result on stdout as text, srt, vtt, json or verbose_json."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import TextIO

from phi4mm.cli.loading import add_model_arguments, load_model
from phi4mm.transcribe import DEFAULT_MAX_TOKENS_PER_WINDOW, FORMATS, Segment, Transcript, Window, render


def add_transcribe_arguments(parser: argparse.ArgumentParser) -> None:
    add = parser.add_argument
    add("file", help="audio file (wav, mp3, flac, ogg, m4a, webm ...)")
    add("--translate-to", metavar="LANG", default=None,
        help="translate into LANG (a name such as French, or an ISO-639-1 code) instead of transcribing")
    add("--language", metavar="LANG", default=None, help="the spoken language, as a hint (name or code)")
    add("--prompt", default=None, help="context for the model, sent as the system message of every window")
    add("--format", choices=FORMATS, default="text", help="output format (default text)")
    add_model_arguments(parser, n_ctx=4096, n_ctx_help="default 4096: a 30 s window takes 375 rows")
    add("--temperature", type=float, default=0.0, help="sampling temperature (default 0: greedy)")
    add("--max-tokens-per-window", type=int, default=DEFAULT_MAX_TOKENS_PER_WINDOW,
        help=f"most tokens generated per window (default {DEFAULT_MAX_TOKENS_PER_WINDOW})")


def transcribe_from_args(args: argparse.Namespace, out: TextIO = sys.stdout) -> int:
    model = load_model(args)
    with model:
        events = model.transcribe_stream(Path(args.file), translate_to=args.translate_to,
                                         language=args.language, prompt=args.prompt,
                                         temperature=args.temperature,
                                         max_tokens_per_window=args.max_tokens_per_window)
        transcript = report_progress(events)
    body = render(transcript, args.format)
    out.write(json.dumps(body, ensure_ascii=False, indent=2) + "\n" if isinstance(body, dict)
              else body if body.endswith("\n") else body + "\n")
    return 0


def report_progress(events) -> Transcript:
    """Consume the events, one stderr line per finished window; the Transcript at the end."""
    started = time.perf_counter()
    n_windows = 0
    for event in events:
        if isinstance(event, Segment):
            print(f"phi4mm: window {event.id + 1}/{n_windows} ({event.start_s:.1f}-{event.end_s:.1f} s) "
                  f"done in {time.perf_counter() - started:.1f} s", file=sys.stderr, flush=True)
            started = time.perf_counter()
        elif isinstance(event, Transcript):
            return event
        elif isinstance(event, Window):
            n_windows = event.n_windows
    raise RuntimeError("the transcription ended without a transcript")
