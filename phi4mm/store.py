"""Find a model: a converted directory as is; a checkpoint directory (either hub layout) or a hub
repo id converted once into the cache directory and reused (the in-situ quantization users know from
other engines). A repo id is looked up in huggingface_hub's cache before anything is downloaded."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from pathlib import Path

from phi4mm.errors import InputError, ModelNotFoundError
from phi4mm.files import ModelFiles

DEFAULT_MODEL = "microsoft/Phi-4-multimodal-instruct"
DEFAULT_QUANT = "q4_k_m"
Progress = Callable[[str, int, int], None]


def cache_root(cache_dir: str | Path | None = None) -> Path:
    if cache_dir:
        return Path(cache_dir).expanduser()
    return Path(os.environ.get("PHI4MM_CACHE", "~/.cache/phi4mm")).expanduser()


def locate(model: str | Path, quant: str | None = None, encoder_type: str = "f16",
           cache_dir: str | Path | None = None, progress: Progress | None = None,
           n_threads: int = 0) -> ModelFiles:
    """The converted files for `model`, converting (and downloading) on first use."""
    path = Path(model).expanduser()
    if path.is_dir() and ModelFiles.is_converted(path):
        files = ModelFiles.from_dir(path)
        if quant and quant != files.quant:
            raise InputError(f"{path} holds a {files.quant} conversion but quant={quant!r} was asked; "
                             f"omit quant, or convert again with `phi4mm convert SRC DIR --quant {quant}`",
                             param="quant")
        return files
    quant = quant or DEFAULT_QUANT
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelNotFoundError(f"{path} has neither manifest.json (a converted model) nor "
                                     "config.json (a hub-layout checkpoint)")
        target = cache_root(cache_dir) / "local" / _fingerprint(path.resolve()) / f"{quant}-{encoder_type}"
        return _convert_once(path.resolve(), target, quant, encoder_type, progress, n_threads)
    return _from_hub(str(model), quant, encoder_type, cache_root(cache_dir), progress, n_threads)


def _from_hub(repo_id: str, quant: str, encoder_type: str, root: Path, progress: Progress | None,
              n_threads: int) -> ModelFiles:
    """Cache first: a complete snapshot in huggingface_hub's cache, else an earlier conversion, else a
    download. No network is used while either cache can answer."""
    from phi4mm.converter.source import cached_source, download, looks_like_repo_id

    if not looks_like_repo_id(repo_id):
        raise ModelNotFoundError(f"{repo_id!r} is not a directory, and not a hub repo id like {DEFAULT_MODEL!r}")
    repo_dir = root / "hub" / repo_id.replace("/", "--")
    source = cached_source(repo_id)
    if source is None:
        converted = sorted((p.parent for p in repo_dir.glob(f"*/{quant}-{encoder_type}/manifest.json")),
                           key=lambda p: p.stat().st_mtime)
        if converted:  # converted before, and the hub cache no longer holds it: use the newest conversion
            return ModelFiles.from_dir(converted[-1])
        source = download(repo_id)
    target = repo_dir / (source.revision or "unknown") / f"{quant}-{encoder_type}"
    return _convert_once(source, target, quant, encoder_type, progress, n_threads)


def _convert_once(source, target: Path, quant: str, encoder_type: str, progress: Progress | None,
                  n_threads: int) -> ModelFiles:
    if not ModelFiles.is_converted(target):
        from phi4mm.converter.convert import convert

        convert(source, target, quant=quant, encoder_type=encoder_type, n_threads=n_threads, progress=progress)
    return ModelFiles.from_dir(target)


def _fingerprint(root: Path) -> str:
    """Identifies a local checkpoint's content cheaply: config bytes, weight file sizes and times."""
    h = hashlib.sha256(str(root).encode())
    h.update((root / "config.json").read_bytes())
    for f in sorted(root.glob("*.safetensors")) + sorted(root.glob("*/adapter_model.safetensors")):
        st = f.stat()
        h.update(f"{f.relative_to(root)}:{st.st_size}:{st.st_mtime_ns}".encode())
    return f"{root.name}-{h.hexdigest()[:16]}"
