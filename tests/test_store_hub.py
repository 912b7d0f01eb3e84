"""A repo id as users have it: resolved through huggingface_hub's cache first (HF_HOME,
HF_HUB_OFFLINE=1), downloading only what conversion needs, hub refusals as typed errors.

No network here: the cache is the folder structure huggingface_hub writes, built in the test, and
the hub's refusals are its own exception types raised from a stand-in for the download function.
"""

import hashlib
import json
import os
import subprocess
import sys

import httpx2
import huggingface_hub
import pytest
from huggingface_hub import constants, errors
from huggingface_hub._tree_cache import TreeCacheEntry, write_tree_cache
from huggingface_hub.hf_api import HfApi
from huggingface_hub.utils import filter_repo_objects

from phi4mm import store
from phi4mm.converter import source
from phi4mm.converter.source import HubAccessError, resolve_source
from phi4mm.errors import ModelNotFoundError

REPO = "microsoft/Phi-4-multimodal-instruct"
COMMIT = "93f923e3b6fd9c1b3cbe6cae1e8ec7b8d2f1b6a3"


def populate_hub_cache(cache, src, repo=REPO, commit=COMMIT, not_downloaded=("README.md",)):
    """What huggingface_hub leaves after downloading some of a repo's files: blobs/<hash>, snapshots/<commit>/
    of relative links into blobs, refs/main holding the commit, and the cached listing of the whole repo
    (which names files never downloaded). Returns the snapshot folder."""
    repo_dir = cache / ("models--" + repo.replace("/", "--"))
    (repo_dir / "blobs").mkdir(parents=True)
    snapshot = repo_dir / "snapshots" / commit
    listing = {}
    for f in sorted(p for p in src.rglob("*") if p.is_file()):
        rel = f.relative_to(src)
        blob = repo_dir / "blobs" / hashlib.sha256(f"{rel}:{f.stat().st_size}".encode()).hexdigest()  # the etag's place
        os.link(os.path.realpath(f), blob)
        link = snapshot / rel
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))
        listing[str(rel)] = TreeCacheEntry(size=f.stat().st_size, blob_id=blob.name)
    listing.update({rel: TreeCacheEntry(size=1, blob_id="0" * 40) for rel in not_downloaded})
    write_tree_cache(str(repo_dir), commit, listing)
    (repo_dir / "refs").mkdir()
    (repo_dir / "refs" / "main").write_text(commit)
    return snapshot


@pytest.fixture
def offline_cache(tmp_path, monkeypatch):
    """huggingface_hub's cache pointed at tmp_path/hub, offline mode on (what HF_HOME and
    HF_HUB_OFFLINE=1 set when the process starts)."""
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    return tmp_path / "hub"


def test_a_populated_cache_resolves_offline_by_repo_id(tmp_path, tiny_ckpt):
    # hub main also holds PEFT copies of the LoRAs, which conversion of this layout never downloads
    snapshot = populate_hub_cache(tmp_path / "hf" / "hub", tiny_ckpt,
                                  not_downloaded=("README.md", "vision-lora/adapter_model.safetensors"))
    env = {**os.environ, "HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1"}
    env.pop("HF_HUB_CACHE", None)
    code = ("from phi4mm.converter.source import resolve_source; "
            f"s = resolve_source({REPO!r}); print(s.root); print(s.revision)")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == [str(snapshot), COMMIT]


@pytest.mark.slow
def test_locate_converts_from_the_hub_cache_offline_then_reuses(tmp_path, tiny_ckpt, tiny_f32, offline_cache):
    snapshot = populate_hub_cache(offline_cache, tiny_ckpt)
    cache = tmp_path / "phi4mm"
    files = store.locate(REPO, quant="f32", encoder_type="f32", cache_dir=cache)
    manifest = json.loads((files.root / "manifest.json").read_text())
    assert (manifest["source"], manifest["revision"]) == (REPO, COMMIT)
    expected = json.loads((tiny_f32 / "manifest.json").read_text())["files"]["text"]["name"]
    assert files.text.read_bytes() == (tiny_f32 / expected).read_bytes()
    stamp = (files.root / "manifest.json").stat().st_mtime_ns
    assert store.locate(REPO, quant="f32", encoder_type="f32", cache_dir=cache).root == files.root
    for f in snapshot.rglob("*"):  # the hub cache emptied: the earlier conversion still serves
        if f.is_symlink():
            f.unlink()
    assert store.locate(REPO, quant="f32", encoder_type="f32", cache_dir=cache).root == files.root
    assert (files.root / "manifest.json").stat().st_mtime_ns == stamp  # never converted again


def test_an_incomplete_cached_snapshot_offline_names_the_missing_file(tiny_ckpt, offline_cache):
    snapshot = populate_hub_cache(offline_cache, tiny_ckpt)
    (snapshot / "model-00002-of-00002.safetensors").unlink()
    with pytest.raises(ModelNotFoundError, match="HF_HUB_OFFLINE.*incomplete.*model-00002-of-00002.safetensors"):
        resolve_source(REPO)


def test_a_repo_not_in_the_cache_offline_says_how_to_copy_one(offline_cache):
    with pytest.raises(ModelNotFoundError, match="not in the huggingface_hub cache.*copy a snapshot folder"):
        resolve_source(REPO)


def refusal(kind, status):
    request = httpx2.Request("GET", f"https://huggingface.co/api/models/{REPO}/revision/main")
    return kind(f"{status} Client Error", response=httpx2.Response(status, request=request))


@pytest.mark.parametrize("kind, status", [
    (errors.GatedRepoError, 403),
    (errors.GatedRepoError, 401),
    (errors.RepositoryNotFoundError, 401),
    (errors.HfHubHTTPError, 403),
])
def test_a_refusing_hub_is_a_typed_error_about_tokens(monkeypatch, tmp_path, kind, status):
    """The hub's answer to the first request of the real snapshot_download is a refusal."""
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)

    def refuse(self, *args, **kwargs):
        raise refusal(kind, status)

    monkeypatch.setattr(HfApi, "repo_info", refuse)
    with pytest.raises(HubAccessError, match="HF_TOKEN.*hf auth login") as err:
        resolve_source(REPO)
    assert err.value.status == status
    assert ("is gated: accept its terms" in str(err.value)) == (kind is errors.GatedRepoError)


def test_no_network_says_what_to_do(monkeypatch, tmp_path):
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)

    def unreachable(self, *args, **kwargs):
        raise httpx2.ConnectError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(HfApi, "repo_info", unreachable)
    with pytest.raises(ModelNotFoundError, match="copy a snapshot folder.*HTTPS_PROXY") as err:
        resolve_source(REPO)
    assert not isinstance(err.value, HubAccessError)


@pytest.mark.parametrize("layout", ["original", "native"])
def test_only_the_files_conversion_needs_are_downloaded(monkeypatch, tmp_path, tiny_ckpt, layout, request):
    remote = tiny_ckpt if layout == "original" else request.getfixturevalue("tiny_native_dir")
    extras = ["modeling_phi4mm.py", "vocab.json", "merges.txt", "README.md", "examples/what_is_shown.png"]
    if layout == "original":  # hub main also has PEFT copies of the LoRAs, for vLLM (model-spec.md §1.4)
        extras += ["vision-lora/adapter_model.safetensors", "speech-lora/adapter_config.json"]
    listing = sorted(str(p.relative_to(remote)) for p in remote.rglob("*") if p.is_file()) + extras
    calls = []

    def fake_download(repo_id, revision=None, allow_patterns=None, local_files_only=False, **kwargs):
        if local_files_only:
            raise errors.LocalEntryNotFoundError("not in the cache")
        calls.append(revision)
        snapshot = tmp_path / "snapshots" / COMMIT
        for rel in filter_repo_objects(listing, allow_patterns=allow_patterns):  # huggingface_hub's own filter
            (snapshot / rel).parent.mkdir(parents=True, exist_ok=True)
            if not (snapshot / rel).exists():
                target = remote / rel
                (snapshot / rel).symlink_to(target if target.exists() else os.devnull)
        return str(snapshot)

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_download)
    found = source.resolve_source(REPO)
    fetched = {str(p.relative_to(found.root)) for p in found.root.rglob("*") if not p.is_dir()}
    weights = {r for r in listing if r.endswith(".safetensors")}
    if layout == "original":
        weights -= {"vision-lora/adapter_model.safetensors"}
    assert weights <= fetched and {"config.json", "tokenizer.json", "tokenizer_config.json"} <= fetched
    assert not fetched & set(extras)
    assert ("vision-lora/adapter_model.safetensors" in fetched) == (layout == "native")
    assert calls == [None, COMMIT]  # the weights come from the commit the config came from
    assert found.revision == COMMIT


@pytest.fixture(scope="module")
def tiny_native_dir(tmp_path_factory):
    from make_checkpoint import write_checkpoint

    return write_checkpoint(tmp_path_factory.mktemp("native"), size="tiny", seed=0, shards=2, layout="native")
