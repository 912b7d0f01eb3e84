"""Where a checkpoint comes from: a local hub-layout directory, or a hub repo id downloaded with
huggingface_hub (only the files conversion needs)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from phi4mm.errors import ModelNotFoundError

HUB_FILES = ["*.json", "model*.safetensors", "merges.txt", "vocab.json"]


@dataclass(frozen=True)
class Source:
    root: Path
    name: str            # what the user passed
    revision: str | None  # hub commit, None for a local directory


def looks_like_repo_id(name: str) -> bool:
    parts = name.split("/")
    return len(parts) == 2 and all(parts) and not name.startswith((".", "/", "~"))


def resolve_source(name: str | Path, revision: str | None = None) -> Source:
    """A local directory as is; otherwise download the repo's config, tokenizer and weights."""
    path = Path(name).expanduser()
    if path.is_dir():
        return Source(path.resolve(), str(name), None)
    if not looks_like_repo_id(str(name)):
        raise ModelNotFoundError(f"{name!r} is neither a directory nor a hub repo id like "
                                 "'microsoft/Phi-4-multimodal-instruct'")
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    try:
        root = Path(snapshot_download(str(name), revision=revision, allow_patterns=HUB_FILES))
    except (LocalEntryNotFoundError, HfHubHTTPError, OSError) as exc:
        raise ModelNotFoundError(
            f"could not download {name!r} from the Hugging Face hub ({type(exc).__name__}: {exc}). "
            "Without network, pass a local hub-layout directory (config.json + safetensors) or a "
            "directory converted with `phi4mm convert`.") from exc
    return Source(root, str(name), root.name)
