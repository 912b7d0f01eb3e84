"""Command-line flags shared by `phi4mm serve` (server/settings.py) and `phi4mm run` /
`transcribe` (cli/loading.py): where the decoder and the encoders run (README, section GPU)."""

from __future__ import annotations

import argparse

from phi4mm import keys


def add_device_arguments(parser: argparse.ArgumentParser) -> None:
    """--gpu-layers, --main-gpu, --encoder-device."""
    add = parser.add_argument
    add("--gpu-layers", type=int, default=None, metavar="N", help="decoder layers to offload to the GPU, the "
        "output layer counting as one; -1: all (default: all when llama.cpp has a GPU backend, else 0)")
    add("--main-gpu", type=int, default=None, metavar="I", help="put the whole decoder on GPU I "
        "(0, 1, ...; default: split its layers over every GPU)")
    add("--encoder-device", choices=keys.ENCODER_DEVICES, default="cpu",
        help="where the image and audio encoders run (default cpu)")
