"""Dependency boundaries (STYLE.md): which modules may import which heavy libraries."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE_FILES = sorted([*ROOT.glob("phi4mm/**/*.py"), *ROOT.glob("converter/**/*.py"),
                        *ROOT.glob("server/**/*.py")])

ALLOWED = {  # library -> files that may import it
    "llama_cpp": {"phi4mm/engine/llama.py"},
    "PIL": {"phi4mm/media/image.py", "phi4mm/vision/preprocess.py"},
    "av": {"phi4mm/media/audio.py"},
    "soundfile": {"phi4mm/media/audio.py"},
    "starlette": {str(p.relative_to(ROOT)) for p in ROOT.glob("server/**/*.py")},
    "uvicorn": {"server/app.py"},
    "prometheus_client": {"server/metrics.py"},
    "torch": set(),
    "transformers": set(),
    "tokenizers": {"phi4mm/engine/tokenizer.py", "converter/pretokenizer.py"},
}
PURE = {"phi4mm/vision/preprocess.py", "phi4mm/vision/encoder.py", "phi4mm/prompt.py", "phi4mm/params.py",
        "phi4mm/engine/streaming.py", "converter/names.py"}  # numpy + standard library (+ Pillow resize)


def imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("path", PACKAGE_FILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_heavy_imports_stay_in_their_module(path):
    rel = str(path.relative_to(ROOT))
    for library in imported_modules(path) & set(ALLOWED):
        assert rel in ALLOWED[library], f"{rel} imports {library}"


@pytest.mark.parametrize("rel", sorted(PURE))
def test_pure_modules_do_no_io(rel):
    source = (ROOT / rel).read_text()
    allowed = {"numpy", "phi4mm", "__future__", "math", "re", "dataclasses", "typing", "collections",
               "hashlib", "PIL", "itertools", "functools", "codecs", "concurrent"}
    assert imported_modules(ROOT / rel) <= allowed, imported_modules(ROOT / rel) - allowed
    for call in ("open(", "os.environ", "urllib", "socket"):
        assert call not in source, f"{rel} uses {call}"
