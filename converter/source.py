"""Where a checkpoint comes from: a local directory in either layout, or a hub repo id.

A repo id resolves through huggingface_hub's cache first (it honours HF_HOME, HF_HUB_CACHE and
HF_HUB_OFFLINE=1), so a complete snapshot there is used without network. Otherwise only the files
conversion needs are downloaded, with huggingface_hub's own progress bars; an interrupted download
resumes on the next run. Hub refusals become typed errors that say what to do.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from phi4mm.converter.checkpoint import CheckpointFileError, missing_files
from phi4mm.converter.layouts import layout_of
from phi4mm.errors import ModelNotFoundError

CONFIG_FILES = ("config.json", "preprocessor_config.json", "processor_config.json", "generation_config.json",
                "tokenizer.json", "tokenizer_config.json")
TOKEN_HINT = ("set HF_TOKEN to an access token (https://huggingface.co/settings/tokens) or run "
              "`hf auth login` (`huggingface-cli login` in older huggingface_hub versions)")
OFFLINE_HINT = ("Without network, copy a snapshot folder (config.json, tokenizer.json, the safetensors) from a "
                "machine that has it and pass its path, or copy that machine's hub cache "
                "(~/.cache/huggingface/hub/models--OWNER--NAME) into HF_HOME/hub. Behind a proxy, set HTTPS_PROXY.")


class HubAccessError(ModelNotFoundError):
    """The hub refused the repo: gated, private without a token, or no such repo. `status` is the
    HTTP status when there was one (401, 403, 404)."""

    def __init__(self, message: str, status: int | None):
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class Source:
    root: Path
    name: str             # what the user passed
    revision: str | None  # hub commit, None for a local directory


def looks_like_repo_id(name: str) -> bool:
    parts = name.split("/")
    return len(parts) == 2 and all(parts) and not name.startswith((".", "/", "~"))


def resolve_source(name: str | Path, revision: str | None = None) -> Source:
    """A local directory as is; a repo id from the hub cache, else downloaded into it."""
    path = Path(name).expanduser()
    if path.is_dir():
        return Source(path.resolve(), str(name), None)
    if not looks_like_repo_id(str(name)):
        raise ModelNotFoundError(f"{name!r} is neither a directory nor a hub repo id like "
                                 "'microsoft/Phi-4-multimodal-instruct'")
    cached = cached_source(str(name), revision)
    return cached if cached is not None else download(str(name), revision)


def cached_source(repo_id: str, revision: str | None = None) -> Source | None:
    """The repo's snapshot in huggingface_hub's cache if it holds every file conversion needs; no network."""
    root, problem = _cache_lookup(repo_id, revision)
    return Source(root, repo_id, root.name) if root is not None and problem is None else None


def download(repo_id: str, revision: str | None = None) -> Source:
    """Download the config, tokenizer and weight files of the repo's layout; nothing else."""
    from huggingface_hub import constants, snapshot_download

    if constants.HF_HUB_OFFLINE:
        root, problem = _cache_lookup(repo_id, revision)
        state = (f"its cached snapshot {root} is incomplete ({problem})" if root is not None
                 else "it is not in the huggingface_hub cache")
        raise ModelNotFoundError(f"HF_HUB_OFFLINE is set and {repo_id!r} cannot be converted: {state}. "
                                 + OFFLINE_HINT)
    with _hub_errors(repo_id, revision):
        root = Path(snapshot_download(repo_id, revision=revision, allow_patterns=list(CONFIG_FILES)))
        layout = layout_of(json.loads((root / "config.json").read_text()))
        root = Path(snapshot_download(repo_id, revision=root.name,  # the same commit as the config
                                      allow_patterns=[*CONFIG_FILES, *layout.weight_files]))
    missing = missing_files(root)
    if missing:
        raise CheckpointFileError(f"{repo_id} at {root.name} lacks {', '.join(missing)}, which conversion needs "
                                  f"({layout.name} layout)", root / missing[0])
    return Source(root, repo_id, root.name)


def _cache_lookup(repo_id: str, revision: str | None) -> tuple[Path | None, str | None]:
    """(the cached snapshot folder, what it lacks for conversion or None); (None, None) if not cached.

    Asks huggingface_hub with the same file patterns a download uses, so a snapshot holding only
    what conversion needs counts as complete against the cached listing of the whole repo."""
    from huggingface_hub import errors, snapshot_download

    def snapshot(patterns: list[str]) -> Path:
        return Path(snapshot_download(repo_id, revision=revision, local_files_only=True, allow_patterns=patterns))

    root = None
    try:
        root = snapshot(list(CONFIG_FILES))
        layout = layout_of(json.loads((root / "config.json").read_text()))
        snapshot([*CONFIG_FILES, *layout.weight_files])
        missing = missing_files(root)
    except errors.IncompleteSnapshotError as exc:
        return Path(exc.snapshot_path), str(exc)
    except errors.LocalEntryNotFoundError:
        return None, None
    except Exception as exc:  # an unreadable cached config or index: not usable offline
        return root, f"{type(exc).__name__}: {exc}"
    return root, (f"it lacks {', '.join(missing)}" if missing else None)


@contextmanager
def _hub_errors(repo_id: str, revision: str | None) -> Iterator[None]:
    """huggingface_hub's exceptions -> this package's, with what to do about each."""
    from huggingface_hub import errors

    try:
        yield
    except errors.GatedRepoError as exc:
        raise HubAccessError(f"{repo_id} is gated: accept its terms at https://huggingface.co/{repo_id} while "
                             f"logged in, then {TOKEN_HINT}.", _status(exc)) from exc
    except errors.RepositoryNotFoundError as exc:
        raise HubAccessError(f"{repo_id} was not found on the hub (HTTP {_status(exc)}): check the name; if it is "
                             f"private or gated, {TOKEN_HINT}.", _status(exc)) from exc
    except errors.RevisionNotFoundError as exc:
        raise ModelNotFoundError(f"{repo_id} has no revision {revision!r}") from exc
    except (errors.LocalEntryNotFoundError, errors.OfflineModeIsEnabled) as exc:
        status = _status(exc.__cause__)  # snapshot_download wraps a refusal it could not answer from the cache
        if status in (401, 403):
            raise HubAccessError(f"the hub refused access to {repo_id} (HTTP {status}): {TOKEN_HINT}.",
                                 status) from exc
        raise ModelNotFoundError(f"could not download {repo_id!r} from the Hugging Face hub "
                                 f"({type(exc).__name__}: {exc}). {OFFLINE_HINT}") from exc
    except errors.HfHubHTTPError as exc:
        status = _status(exc)
        if status in (401, 403):
            raise HubAccessError(f"the hub refused access to {repo_id} (HTTP {status}): {TOKEN_HINT}.",
                                 status) from exc
        raise ModelNotFoundError(f"downloading {repo_id} failed (HTTP {status}: {exc}). {OFFLINE_HINT}") from exc
    except OSError as exc:  # no route, proxy refused, DNS: raised by the HTTP client
        raise ModelNotFoundError(f"could not download {repo_id!r} from the Hugging Face hub "
                                 f"({type(exc).__name__}: {exc}). {OFFLINE_HINT}") from exc


def _status(exc: Exception) -> int | None:
    response = getattr(exc, "response", None)
    return getattr(response, "status_code", None)
