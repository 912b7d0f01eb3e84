"""What a real user's files do to the converter: truncated or missing shards are typed errors naming
the file; a conversion stopped midway (disk full, SIGKILL while quantizing) is never mistaken for a
finished one, and the next run resumes it and says so; free space is checked before writing."""

import errno
import json
import logging
import os
import shutil
import subprocess
import sys
from collections import namedtuple

import pytest

from phi4mm.converter import write
from phi4mm.converter.checkpoint import Checkpoint, CheckpointFileError
from phi4mm.converter.convert import convert
from phi4mm.converter.journal import JOURNAL, SOURCE_SUFFIX, Journal
from phi4mm.converter.write import DISK_MARGIN_BYTES, DiskSpaceError
from phi4mm.files import ModelFiles

SHARD_1, SHARD_2 = "model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"


def linked_copy(src, dst):
    shutil.copytree(src, dst, copy_function=os.symlink)
    return dst


def replace_with_prefix(path, n_bytes):
    """Make `path` (a link into the fixture) a real file holding the first n_bytes of its target."""
    target = os.path.realpath(path)
    path.unlink()
    shutil.copyfile(target, path)
    os.truncate(path, n_bytes)


def files_of(root):
    return json.loads((root / "manifest.json").read_text())["files"]


def test_a_truncated_shard_is_a_typed_error_naming_it(tmp_path, tiny_ckpt):
    ckpt = linked_copy(tiny_ckpt, tmp_path / "ck")
    replace_with_prefix(ckpt / SHARD_2, (tiny_ckpt / SHARD_2).stat().st_size - 1000)
    with pytest.raises(CheckpointFileError, match=f"{SHARD_2} is truncated") as err:
        convert(ckpt, tmp_path / "out", quant="f32")
    assert err.value.path == ckpt / SHARD_2
    assert not (tmp_path / "out").exists()  # refused before any output


def test_a_shard_cut_inside_its_header_is_a_typed_error(tmp_path, tiny_ckpt):
    ckpt = linked_copy(tiny_ckpt, tmp_path / "ck")
    replace_with_prefix(ckpt / SHARD_1, 100)
    with pytest.raises(CheckpointFileError, match=f"{SHARD_1}: not a complete safetensors file"):
        Checkpoint(ckpt)


def test_a_missing_shard_named_in_the_index_is_a_typed_error(tmp_path, tiny_ckpt):
    ckpt = linked_copy(tiny_ckpt, tmp_path / "ck")
    (ckpt / SHARD_1).unlink()
    with pytest.raises(CheckpointFileError, match=f"lacks {SHARD_1}") as err:
        convert(ckpt, tmp_path / "out", quant="f32")
    assert err.value.path == ckpt / SHARD_1


def test_a_shard_shrinking_during_conversion_is_a_typed_error(tmp_path, tiny_ckpt):
    ckpt = linked_copy(tiny_ckpt, tmp_path / "ck")
    checkpoint = Checkpoint(ckpt)  # headers checked while the file was complete
    name = max((k for k, e in checkpoint.tensors.items() if e.file.name == SHARD_2),
               key=lambda k: checkpoint.tensors[k].offset)
    replace_with_prefix(ckpt / SHARD_2, checkpoint.tensors[name].offset + 10)
    with pytest.raises(CheckpointFileError, match=f"{SHARD_2} ended while reading"):
        checkpoint.read(name)


def test_too_little_disk_space_is_refused_before_writing(tmp_path, tiny_ckpt, tiny_f32, monkeypatch):
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(10**12, 10**12 - 10**6, 10**6))
    with pytest.raises(DiskSpaceError) as err:
        convert(tiny_ckpt, tmp_path / "out", quant="f32", encoder_type="f32")
    written = sum(entry["bytes"] for entry in files_of(tiny_f32).values())  # what the conversion takes
    assert written <= err.value.needed_bytes <= written + DISK_MARGIN_BYTES
    assert f"{err.value.needed_bytes / 1e9:.2f} GB" in str(err.value) and err.value.free_bytes == 10**6
    assert not list((tmp_path / "out").glob("*.gguf"))


@pytest.mark.slow
def test_a_full_disk_midway_is_resumed_on_the_next_run(tmp_path, tiny_ckpt, tiny_f32, monkeypatch, caplog):
    calls = {"n": 0}
    real = write.convert_chunk

    def filling(raw, out_type):
        calls["n"] += 1
        if calls["n"] == 40:  # while writing the speech LoRA, the third file
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(raw, out_type)

    monkeypatch.setattr(write, "convert_chunk", filling)
    out = tmp_path / "out"
    with pytest.raises(DiskSpaceError, match="filled up"):
        convert(tiny_ckpt, out, quant="f32", encoder_type="f32")
    monkeypatch.undo()
    assert not ModelFiles.is_converted(out) and not list(out.glob("*.partial"))
    finished = set(json.loads((out / JOURNAL).read_text())["done"])
    assert finished == {"text", "vision_lora"}
    with caplog.at_level(logging.WARNING, logger="phi4mm.converter"):
        manifest = convert(tiny_ckpt, out, quant="f32", encoder_type="f32")
    assert any("resuming" in r.getMessage() and "text, vision_lora" in r.getMessage() for r in caplog.records)
    assert manifest["resumed"] == ["text", "vision_lora"] and not (out / JOURNAL).exists()
    for role, entry in files_of(tiny_f32).items():
        assert (out / entry["name"]).read_bytes() == (tiny_f32 / entry["name"]).read_bytes(), role


def test_an_unfinished_conversion_of_other_settings_is_started_over(tmp_path, caplog):
    out = tmp_path / "out"
    out.mkdir()
    (out / "phi4mm-text-q8_0.gguf.partial").write_bytes(b"half")
    (out / "phi4mm-text-q8_0.bf16-source.gguf").write_bytes(b"exact")
    (out / JOURNAL).write_text(json.dumps({"job": {"quant": "q8_0"}, "done": {
        "text_source": {"name": "phi4mm-text-q8_0.bf16-source.gguf", "bytes": 5}}}))
    with caplog.at_level(logging.WARNING, logger="phi4mm.converter"):
        journal = Journal.open(out, {"quant": "q4_k_m"})
    assert journal.done == {} and journal.resumed == frozenset()
    assert any("over" in r.getMessage() and "other settings" in r.getMessage() for r in caplog.records)
    assert sorted(p.name for p in out.iterdir()) == [JOURNAL]


KILLED_CHILD = """
import sys
from pathlib import Path

from phi4mm.engine import llama
from phi4mm.converter.convert import convert

real = llama.quantize_model


def quantize_then_wait(src, dst, quant, n_threads):
    real(src, dst, quant, n_threads)  # the whole quantized file exists, still under its .partial name
    print("quantized", flush=True)
    sys.stdin.read()  # until killed


llama.quantize_model = quantize_then_wait
convert(Path(sys.argv[1]), Path(sys.argv[2]), quant="q4_k_m", encoder_type="f16", n_threads=2)
print("finished", flush=True)
"""


@pytest.mark.slow
def test_a_conversion_killed_while_quantizing_is_detected_and_redone(tmp_path, tiny_ckpt, tiny_q4, caplog):
    script = tmp_path / "child.py"
    script.write_text(KILLED_CHILD)
    out = tmp_path / "out"
    child = subprocess.Popen([sys.executable, str(script), str(tiny_ckpt), str(out)], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline() == "quantized\n"
    finally:
        child.kill()  # SIGKILL: no handler, no cleanup
        child.wait()
        child.stdin.close()
        child.stdout.close()
    assert child.returncode == -9
    text = files_of(tiny_q4)["text"]["name"]
    assert (out / (text + ".partial")).is_file() and not (out / text).exists()
    assert not ModelFiles.is_converted(out)  # so neither `locate` nor the API would load it
    with caplog.at_level(logging.WARNING, logger="phi4mm.converter"):
        manifest = convert(tiny_ckpt, out, quant="q4_k_m", encoder_type="f16", n_threads=2)
    assert any("resuming" in r.getMessage() for r in caplog.records)
    assert manifest["resumed"] == ["text_source"]  # the exact decoder was kept: only quantizing was redone
    assert not list(out.glob("*.partial")) and not list(out.glob("*" + SOURCE_SUFFIX))
    for role, entry in files_of(tiny_q4).items():
        assert (out / entry["name"]).read_bytes() == (tiny_q4 / entry["name"]).read_bytes(), role
    ModelFiles.from_dir(out)
