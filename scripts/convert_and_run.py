"""Convert a Phi-4-multimodal-instruct checkpoint (hub-layout directory or hub repo id) to GGUF,
then answer one prompt, optionally about an image, streaming the answer to the terminal.

    python scripts/convert_and_run.py microsoft/Phi-4-multimodal-instruct ./phi4mm-q4 \
        --image https://example.com/mountain.jpg "What is shown in this image?"

The image may be a local path, an http(s) URL or base64 text. Conversion is skipped when OUT_DIR
already holds a conversion (its manifest.json).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from phi4mm import Phi4MM, Phi4MMError
from phi4mm.files import ModelFiles
from phi4mm.progress import ProgressPrinter


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("src", help="hub-layout directory or hub repo id")
    parser.add_argument("out_dir", type=Path, help="directory for the GGUF files")
    parser.add_argument("prompt", nargs="?", default="Describe this image in detail.")
    parser.add_argument("--image", default=None, help="image path, URL or base64 text")
    parser.add_argument("--quant", default="q4_k_m", help="text decoder type (default q4_k_m)")
    parser.add_argument("--max-tokens", type=int, default=256)
    parser.add_argument("--threads", type=int, default=0, help="CPU threads (default: all cores)")
    return parser.parse_args(argv)


def convert_once(src: str, out_dir: Path, quant: str, n_threads: int) -> None:
    if ModelFiles.is_converted(out_dir):
        print(f"{out_dir} is already converted", file=sys.stderr)
        return
    from phi4mm.converter.convert import convert

    convert(src, out_dir, quant=quant, n_threads=n_threads, progress=ProgressPrinter())


def user_message(prompt: str, image: str | None) -> dict:
    if image is None:
        return {"role": "user", "content": prompt}
    return {"role": "user", "content": [{"type": "image_url", "image_url": {"url": image}},
                                        {"type": "text", "text": prompt}]}


def answer(model: Phi4MM, message: dict, max_tokens: int) -> dict:
    """Stream the answer to stdout; returns the usage of the last chunk."""
    usage: dict = {}
    for chunk in model.create_chat_completion([message], max_tokens=max_tokens, temperature=0,
                                              stream=True):
        print(chunk["choices"][0]["delta"].get("content", ""), end="", flush=True)
        usage = chunk.get("usage", usage)
    print()
    return usage


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        convert_once(args.src, args.out_dir, args.quant, args.threads)
        started = time.perf_counter()
        with Phi4MM.from_pretrained(args.out_dir, n_threads=args.threads) as model:
            print(f"loaded in {time.perf_counter() - started:.1f} s", file=sys.stderr)
            usage = answer(model, user_message(args.prompt, args.image), args.max_tokens)
    except Phi4MMError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"usage: {usage}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
