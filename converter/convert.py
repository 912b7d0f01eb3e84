"""`phi4mm convert`: a checkpoint in either hub layout -> text decoder, two LoRA adapters, vision and
audio encoder GGUF files plus a manifest, written atomically (manifest last) with progress. Free
space is checked before writing; an interrupted conversion is resumed or redone (`journal`)."""

from __future__ import annotations

import errno
import os
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

from phi4mm.converter import names
from phi4mm.converter.audio import audio_plan
from phi4mm.converter.checkpoint import Checkpoint
from phi4mm.converter.hubconfig import HubConfig, parse_hub_config
from phi4mm.converter.journal import SOURCE_SUFFIX, Journal, job_of
from phi4mm.converter.lora import lora_plan
from phi4mm.converter.plan import QUANT_SIZE_RATIO, FilePlan
from phi4mm.converter.source import Source, resolve_source
from phi4mm.converter.text import text_plan
from phi4mm.converter.tokenizer import read_vocabulary
from phi4mm.converter.vision import vision_plan
from phi4mm.converter.write import (
    DiskSpaceError,
    copy_atomic,
    ensure_free_space,
    partial_path,
    write_json_atomic,
    write_plan,
)
from phi4mm.errors import ConversionError, InputError
from phi4mm.keys import ENCODER_TYPES, QUANTS

DIRECT = ("f32", "f16", "bf16")  # written as is; the others go through llama.cpp's quantizer
MANIFEST = "manifest.json"
MANIFEST_FORMAT = 1
Progress = Callable[[str, int, int], None]


def build_plans(hub: HubConfig, vocab, quant: str, encoder_type: str) -> dict[str, FilePlan]:
    """One plan per output file; a quantized text decoder is first written exactly (bf16) for
    llama.cpp's quantizer. Its token embedding goes in as f32: the quantizer would otherwise expand
    it to a 2.5 GB f32 buffer next to the mapped bf16 copy, pushing peak memory past 4 GB."""
    direct = quant in DIRECT
    lora_type = quant if direct else "q8_0"
    return {
        "text": text_plan(hub, vocab, quant if direct else "bf16", f"phi4mm-text-{quant}.gguf",
                          embed_type=None if direct else "f32"),
        "vision_lora": lora_plan(hub, hub.loras[0], lora_type, f"phi4mm-lora-vision-{lora_type}.gguf"),
        "speech_lora": lora_plan(hub, hub.loras[1], lora_type, f"phi4mm-lora-speech-{lora_type}.gguf"),
        "vision": vision_plan(hub, encoder_type, f"phi4mm-vision-{encoder_type}.gguf"),
        "audio": audio_plan(hub, encoder_type, f"phi4mm-audio-{encoder_type}.gguf"),
    }


def skipped_keys(keys: set[str], hub: HubConfig) -> dict[str, str]:
    """Checkpoint keys inference never reads, each with its reason."""
    skipped = {}
    layer_prefix = names.IMAGE_PREFIX + "img_processor.encoder.layers."
    for key in keys:
        for prefix, reason in names.SKIPPED_PREFIXES:
            if key.startswith(prefix):
                skipped[key] = reason
        if key.startswith(layer_prefix) and int(key[len(layer_prefix):].split(".")[0]) >= hub.vision.n_layers_used:
            skipped[key] = names.SKIPPED_VISION_LAYER_REASON
    return skipped


def check_plans(ckpt: Checkpoint, plans: dict[str, FilePlan], hub: HubConfig) -> dict[str, str]:
    """Every key used exactly once or skipped with a reason; every source shape as expected."""
    claimed = Counter(src for plan in plans.values() for src in plan.sources)
    twice = sorted(k for k, n in claimed.items() if n > 1)
    if twice:
        raise ConversionError(f"keys claimed twice by the name tables: {twice[:5]}")
    keys = set(ckpt.tensors)
    absent = sorted(set(claimed) - keys)
    if absent:
        raise ConversionError(f"the checkpoint lacks {len(absent)} expected tensors, e.g. {absent[:5]}")
    skipped = skipped_keys(keys, hub)
    unclaimed = sorted(keys - set(claimed) - set(skipped))
    if unclaimed:
        raise ConversionError(f"{len(unclaimed)} checkpoint tensors have no mapping, e.g. {unclaimed[:5]}")
    for plan in plans.values():
        for t in plan.tensors:
            if t.source is not None and ckpt.shape(t.source) != t.source_shape:
                raise ConversionError(f"{t.source}: shape {ckpt.shape(t.source)} in the checkpoint, "
                                      f"expected {t.source_shape} from config.json")
    return skipped


def convert(src: str | Path | Source, out_dir: Path, quant: str = "q4_k_m", encoder_type: str = "f16",
            n_threads: int = 0, progress: Progress | None = None, revision: str | None = None) -> dict:
    """Convert src (directory or repo id) into out_dir; returns the manifest written last."""
    if quant not in QUANTS:
        raise InputError(f"quant is {quant!r}, expected one of {', '.join(QUANTS)}", param="quant")
    if encoder_type not in ENCODER_TYPES:
        raise InputError(f"encoder type is {encoder_type!r}, expected f16 or f32", param="encoder_type")
    started = time.monotonic()
    source = src if isinstance(src, Source) else resolve_source(src, revision)
    ckpt = Checkpoint(source.root)
    hub = parse_hub_config(ckpt.config, ckpt.preprocessor)
    vocab = read_vocabulary(source.root, hub.text.vocab_size)
    plans = build_plans(hub, vocab, quant, encoder_type)
    skipped = check_plans(ckpt, plans, hub)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / MANIFEST).unlink(missing_ok=True)  # the directory is incomplete until the end
    journal = Journal.open(out_dir, job_of(ckpt.files, quant, encoder_type))
    ensure_free_space(out_dir, needed_bytes(plans, quant, journal.done, source.root / "tokenizer.json"))
    try:
        files = _write_files(plans, out_dir, ckpt, quant, n_threads, progress, journal)
        files["tokenizer"] = copy_atomic(source.root / "tokenizer.json", out_dir / "tokenizer.json")
    except OSError as exc:
        if exc.errno != errno.ENOSPC:
            raise
        raise DiskSpaceError(f"the disk holding {out_dir} filled up during conversion ({exc}); free space and "
                             "run again: finished files are kept", 0, 0) from exc
    manifest = {
        "format": MANIFEST_FORMAT, "source": source.name, "revision": source.revision, "layout": ckpt.layout.name,
        "quant": quant, "encoder_type": encoder_type, "files": files,
        "pre_tokenizer": {"name": vocab.pre.name, "detected_by": vocab.pre.how},
        "skipped_tensors": len(skipped), "resumed": sorted(journal.resumed),
        "seconds": round(time.monotonic() - started, 1),
    }
    write_json_atomic(out_dir / MANIFEST, manifest)
    journal.finish()
    return manifest


def needed_bytes(plans: dict[str, FilePlan], quant: str, done: dict[str, dict], tokenizer: Path) -> int:
    """Bytes the files still to write take at the peak (the exact decoder and its quantized copy coexist)."""
    total = tokenizer.stat().st_size
    for role, plan in plans.items():
        if role in done:
            continue
        if role == "text" and quant not in DIRECT:
            total += int(plan.nbytes * QUANT_SIZE_RATIO[quant])
            if "text_source" not in done:
                total += plan.nbytes
        else:
            total += plan.nbytes
    return total


def _write_files(plans: dict[str, FilePlan], out_dir: Path, ckpt: Checkpoint, quant: str, n_threads: int,
                 progress: Progress | None, journal: Journal) -> dict:
    files = {}
    for role, plan in plans.items():
        path = out_dir / plan.filename
        if role in journal.done:
            files[role] = journal.done[role]
            continue
        if role == "text" and quant not in DIRECT:
            files[role] = _write_quantized(plan, path, ckpt, quant, n_threads, progress, journal)
        else:
            files[role] = {"name": plan.filename, "bytes": write_plan(plan, path, ckpt, progress, role)}
        journal.record(role, files[role])
    return files


def _write_quantized(plan: FilePlan, path: Path, ckpt: Checkpoint, quant: str, n_threads: int,
                     progress: Progress | None, journal: Journal) -> dict:
    """The exact bf16 decoder (kept across an interruption, so a rerun only quantizes), then llama.cpp's
    quantizer; the exact file is removed once the quantized one is complete."""
    from phi4mm.converter.quantize import quantize_file

    exact = path.with_name(path.stem + SOURCE_SUFFIX)
    if "text_source" not in journal.done:
        size = write_plan(plan, exact, ckpt, progress, "text (bf16)")
        journal.record("text_source", {"name": exact.name, "bytes": size})
    quantize_file(exact, path, quant, n_threads, progress)
    exact.unlink()
    partial_path(exact).unlink(missing_ok=True)
    journal.forget("text_source")
    return {"name": path.name, "bytes": os.path.getsize(path)}
