"""Dependency boundaries (STYLE.md, issue 14): which modules may import which heavy libraries, and
which parts of the package may import which others. The folders follow the pipeline (media I/O ->
encoders -> engine -> API -> CLI and server); imports only point down it."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE_FILES = sorted([*ROOT.glob("phi4mm/**/*.py"), *ROOT.glob("converter/**/*.py"),
                        *ROOT.glob("server/**/*.py")])

ALLOWED = {  # library -> files that may import it
    "llama_cpp": {"phi4mm/engine/llama.py"},
    "PIL": {"phi4mm/media/image.py", "phi4mm/media/isolation.py", "phi4mm/vision/preprocess.py"},
    "av": {"phi4mm/media/audio.py"},
    "soundfile": {"phi4mm/media/audio.py"},
    "starlette": {str(p.relative_to(ROOT)) for p in ROOT.glob("server/**/*.py")} | {"phi4mm/cluster/deployments.py"},
    "ray": {"phi4mm/cluster/router.py", "phi4mm/cluster/deployments.py", "phi4mm/cluster/app.py",
            "phi4mm/cluster/launch.py"},  # the phi4mm[ray] extra; affinity, bridge and scaling run without it
    "uvicorn": {"server/app.py"},
    "prometheus_client": {"server/metrics.py"},
    "torch": set(),
    "transformers": set(),
    "tokenizers": {"phi4mm/engine/tokenizer.py", "converter/pretokenizer.py"},
    "array_api_compat": {"phi4mm/arrays.py"},  # the encoders' namespace comes from phi4mm.arrays
    "cupy": {"phi4mm/arrays.py"},
    "array_api_strict": set(),                  # tests only
}
PURE = {"phi4mm/cluster/affinity.py",
        "phi4mm/vision/preprocess.py", "phi4mm/vision/encoder.py", "phi4mm/prompt.py", "phi4mm/params.py",
        "phi4mm/nn.py", "phi4mm/engine/streaming.py", "phi4mm/engine/offload.py", "phi4mm/transcribe/windows.py",
        "phi4mm/transcribe/instructions.py", "phi4mm/transcribe/results.py", "phi4mm/transcribe/formats.py",
        "converter/names.py"}  # numpy + standard library (+ Pillow resize)

# Each part of the package (a top-level module or folder of phi4mm/, or converter/, server/) and its
# floor: a part imports only parts on lower floors.
FLOORS = [
    {"errors", "keys", "modes", "usage", "progress"},
    {"arrays"},      # the encoders' array namespace and its fallbacks
    {"params", "files", "nn", "weights", "media", "prompt", "flags"},
    {"vision", "audio", "transcribe"},
    {"engine"},
    {"converter"},   # its quantizer runs through engine.llama
    {"store"},       # converts on first use
    {"api"},
    {"__init__"},    # the package's facade: errors, and Phi4MM on first use
    {"server"},
    {"cluster"},     # engine replicas on Ray Serve, each running the server's app
    {"cli"},
    {"__main__"},    # python -m phi4mm
]
FLOOR = {part: i for i, parts in enumerate(FLOORS) for part in parts}
SAME_FLOOR: set[tuple[str, str]] = set()


def imported_modules(path: Path) -> set[str]:
    """Top-level names of every module `path` imports (lazy imports included)."""
    return {name.split(".")[0] for name in imported_names(path)}


def imported_names(path: Path) -> set[str]:
    """Dotted names of every module `path` imports: `from phi4mm import x` as phi4mm.x for a
    submodule x, as phi4mm.__init__ for a name the package itself defines (Phi4MM, __version__)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module == "phi4mm":  # a submodule, or a name from the package's facade
                names.update(f"phi4mm.{alias.name}" if _is_module(alias.name) else "phi4mm.__init__"
                             for alias in node.names)
            else:
                names.add(node.module)
    return names


def _is_module(name: str) -> bool:
    package = ROOT / "phi4mm"
    return name in ("converter", "server") or (package / f"{name}.py").exists() or (package / name).is_dir()


def part_of_file(rel: str) -> str:
    first, *rest = Path(rel).with_suffix("").parts
    return first if first in ("converter", "server") else rest[0]


def part_of_module(name: str) -> str | None:
    """phi4mm.engine.llama -> engine; phi4mm.converter.x -> converter; a library -> None."""
    parts = name.split(".")
    return parts[1] if parts[0] == "phi4mm" and len(parts) > 1 else None


def internal_imports(rel: str) -> set[str]:
    return {n for n in imported_names(ROOT / rel) if part_of_module(n)}


def rel_files(folder: str) -> list[str]:
    return sorted(str(p.relative_to(ROOT)) for p in (ROOT / folder).glob("**/*.py"))


def importers_of(prefix: str) -> set[str]:
    return {str(p.relative_to(ROOT)) for p in PACKAGE_FILES
            if any(n == prefix or n.startswith(prefix + ".") for n in imported_names(p))}


@pytest.mark.parametrize("path", PACKAGE_FILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_heavy_imports_stay_in_their_module(path):
    rel = str(path.relative_to(ROOT))
    for library in imported_modules(path) & set(ALLOWED):
        assert rel in ALLOWED[library], f"{rel} imports {library}"


@pytest.mark.parametrize("rel", sorted(PURE))
def test_pure_modules_do_no_io(rel):
    source = (ROOT / rel).read_text()
    allowed = {"numpy", "phi4mm", "__future__", "math", "re", "dataclasses", "typing", "collections",
               "hashlib", "json", "PIL", "itertools", "functools", "codecs", "concurrent", "zlib", "types"}
    assert imported_modules(ROOT / rel) <= allowed, imported_modules(ROOT / rel) - allowed
    for call in ("open(", "os.environ", "urllib", "socket"):
        assert call not in source, f"{rel} uses {call}"


@pytest.mark.parametrize("path", PACKAGE_FILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_imports_point_down_the_pipeline(path):
    rel = str(path.relative_to(ROOT))
    part = part_of_file(rel)
    assert part in FLOOR, f"{rel}: part {part!r} has no floor in FLOORS (add it where it belongs)"
    for name in internal_imports(rel):
        other = part_of_module(name)
        if other == part:
            continue
        assert other in FLOOR, f"{rel} imports {name}, whose part has no floor"
        assert FLOOR[other] < FLOOR[part] or (part, other) in SAME_FLOOR, \
            f"{rel} ({part}, floor {FLOOR[part]}) imports {name} ({other}, floor {FLOOR[other]})"


def test_media_imports_no_encoder_and_no_engine():
    for rel in rel_files("phi4mm/media"):
        parts = {part_of_module(n) for n in internal_imports(rel)}
        assert not parts & {"vision", "audio", "nn", "weights", "engine"}, (rel, parts)


def test_encoders_import_nothing_from_the_engine():
    for rel in rel_files("phi4mm/vision") + rel_files("phi4mm/audio"):
        parts = {part_of_module(n) for n in internal_imports(rel)}
        assert not parts & {"engine", "media", "api", "cli", "server"}, (rel, parts)


def test_nothing_imports_the_command_line_or_the_server():
    assert importers_of("phi4mm.cli") <= set(rel_files("phi4mm/cli")) | {"phi4mm/__main__.py"}
    assert importers_of("phi4mm.server") <= set(rel_files("server")) | set(rel_files("phi4mm/cli")) | \
        set(rel_files("phi4mm/cluster"))
    assert importers_of("phi4mm.cluster") <= set(rel_files("phi4mm/cluster")) | {"phi4mm/cli/main.py"}
    assert not any(n.startswith("phi4mm.cli") for rel in rel_files("server") for n in internal_imports(rel))


def test_commands_are_siblings_not_a_chain():
    """cli/main dispatches to the command modules; they share only cli/loading and import no other."""
    commands = {"phi4mm.cli.chat", "phi4mm.cli.convert", "phi4mm.cli.transcribe"}
    for rel in rel_files("phi4mm/cli"):
        cli_imports = {n for n in internal_imports(rel) if n.startswith("phi4mm.cli")}
        if rel in ("phi4mm/cli/__init__.py", "phi4mm/cli/__main__.py"):
            assert cli_imports <= {"phi4mm.cli.main"}, (rel, cli_imports)
        elif rel == "phi4mm/cli/main.py":
            assert cli_imports <= commands, cli_imports
        else:
            assert cli_imports <= {"phi4mm.cli.loading"}, (rel, cli_imports)


def test_llama_cpp_is_imported_in_one_module_only():
    importers = {str(p.relative_to(ROOT)) for p in PACKAGE_FILES if "llama_cpp" in imported_modules(p)}
    assert importers == {"phi4mm/engine/llama.py"}


def test_the_boundary_check_sees_a_violation(tmp_path):
    """Negative control: an engine import from media, a cli import from the API, and a chain between
    two commands are all seen by the helpers the tests above use."""
    bad = tmp_path / "bad.py"
    bad.write_text("from phi4mm.engine.llama import Model\nfrom phi4mm import cli\n"
                   "def f():\n    from phi4mm.cli.chat import load_model\n")
    names = imported_names(bad)
    assert names == {"phi4mm.engine.llama", "phi4mm.cli", "phi4mm.cli.chat"}
    assert {part_of_module(n) for n in names} == {"engine", "cli"}
    assert FLOOR["engine"] > FLOOR["media"] and FLOOR["cli"] > FLOOR["api"]
