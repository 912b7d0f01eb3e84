"""A converted model directory: its manifest parsed once into paths, checked complete."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from phi4mm.errors import ConfigError

MANIFEST = "manifest.json"
ROLES = ("text", "tokenizer", "vision_lora", "speech_lora", "vision", "audio")


@dataclass(frozen=True)
class ModelFiles:
    root: Path
    quant: str
    source: str
    text: Path
    tokenizer: Path
    vision_lora: Path
    speech_lora: Path
    vision: Path
    audio: Path

    @staticmethod
    def is_converted(path: Path) -> bool:
        return (Path(path) / MANIFEST).is_file()

    @classmethod
    def from_dir(cls, root: Path) -> ModelFiles:
        root = Path(root)
        try:
            manifest = json.loads((root / MANIFEST).read_text())
        except (OSError, ValueError) as exc:
            raise ConfigError(f"{root / MANIFEST} is missing or unreadable ({exc}); convert the "
                              "checkpoint with `phi4mm convert SRC OUT_DIR`", key=MANIFEST) from exc
        paths = {}
        for role in ROLES:
            entry = manifest.get("files", {}).get(role)
            if not entry:
                raise ConfigError(f"{root / MANIFEST} lists no '{role}' file", key=f"files.{role}")
            path = root / entry["name"]
            if not path.is_file() or path.stat().st_size != entry["bytes"]:
                raise ConfigError(f"{path} is missing or has the wrong size (expected {entry['bytes']} "
                                  "bytes); convert again", key=f"files.{role}")
            paths[role] = path
        return cls(root=root, quant=manifest.get("quant", "?"), source=manifest.get("source", "?"), **paths)
