"""`phi4mm run` / `phi4mm serve` / `phi4mm transcribe` as a user runs them: subprocesses on the tiny converted model,
and the clean exit-2 message when a model cannot be found offline."""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile
from PIL import Image


def phi4mm(*args: str, env: dict | None = None, stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "phi4mm.cli", *args], check=False, text=True,
                          capture_output=True, input=stdin, timeout=300, env=env)


@pytest.fixture()
def offline_env(tmp_path: Path) -> dict:
    """No network, empty caches: nothing to find a model in."""
    return os.environ | {"HF_HUB_OFFLINE": "1", "PHI4MM_CACHE": str(tmp_path / "phi4mm-cache"),
                         "HF_HOME": str(tmp_path / "hf-home")}


def test_run_one_prompt_streams_and_exits_0(tiny_q4: Path):
    done = phi4mm("run", "--model", str(tiny_q4), "hi", "--max-tokens", "5", "--threads", "2")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip()
    assert "loading" in done.stderr and "loaded in" in done.stderr  # progress on stderr
    assert "phi4mm: decoder: " in done.stderr  # where its layers went
    assert "warning" not in done.stderr


def test_run_with_gpu_layers_says_where_the_decoder_runs(tiny_q4: Path):
    """--gpu-layers 10: a CPU-only build warns, names the fix and runs on the CPU; a GPU build puts
    the tiny model's 3 layers there."""
    from phi4mm.engine import llama

    done = phi4mm("run", "--model", str(tiny_q4), "hi", "--max-tokens", "3", "--threads", "2", "--gpu-layers", "10")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip()
    if llama.gpu_offload_supported():
        assert "phi4mm: decoder: 3/3 layers on " in done.stderr and "warning" not in done.stderr
        return
    lines = done.stderr.splitlines()
    warning = next(line for line in lines if line.startswith("phi4mm: warning: "))
    assert "GPU offload was asked for (10 decoder layers)" in warning
    assert "the installed llama-cpp-python has no GPU backend" in warning and 'README, section "GPU"' in warning
    assert "phi4mm: decoder: on the CPU (this llama.cpp build has no GPU backend)" in lines


@pytest.mark.parametrize("command", [["run", "hi"], ["serve"]])
def test_a_bad_main_gpu_is_exit_2(tiny_q4: Path, command: list[str]):
    done = phi4mm(*command, "--model", str(tiny_q4), "--main-gpu", "-1", "--threads", "2")
    assert done.returncode == 2 and "main_gpu is -1" in done.stderr and "Traceback" not in done.stderr


@pytest.mark.parametrize("command", [["run", "hi"], ["transcribe", "a.wav"], ["serve"]])
def test_device_flags_of_every_command(command: list[str]):
    from phi4mm.cli.main import build_parser

    parser = build_parser()
    defaults = parser.parse_args(command)
    assert (defaults.gpu_layers, defaults.main_gpu, defaults.encoder_device) == (None, None, "cpu")
    given = parser.parse_args([*command, "--gpu-layers", "10", "--main-gpu", "1", "--encoder-device", "cuda"])
    assert (given.gpu_layers, given.main_gpu, given.encoder_device) == (10, 1, "cuda")
    if command == ["serve"]:
        from phi4mm.server.settings import settings_from_args

        settings = settings_from_args(given)
        assert (settings.gpu_layers, settings.main_gpu, settings.encoder_device) == (10, 1, "cuda")


def test_run_with_an_image(tiny_q4: Path, tmp_path: Path):
    picture = tmp_path / "a.png"
    Image.fromarray(np.full((40, 60, 3), 128, np.uint8)).save(picture)
    done = phi4mm("run", "--model", str(tiny_q4), "--image", str(picture), "Describe this",
                  "--max-tokens", "5", "--threads", "2", "--temperature", "0")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip()


def test_run_interactive_reset_and_quit(tiny_q4: Path):
    """After /reset the same greedy question gets the same answer; /quit ends the session."""
    script = "hello\n/image /no/such/file.png\n/reset\nhello\n/quit\nnever sent\n"
    done = phi4mm("run", "--model", str(tiny_q4), "--max-tokens", "3", "--threads", "2",
                  "--temperature", "0", stdin=script)
    assert done.returncode == 0, done.stderr
    assert "/image needs an existing file" in done.stderr
    half = len(done.stdout) // 2
    assert done.stdout.endswith("\n") and done.stdout[:half] == done.stdout[half:]


def write_wav(path: Path, seconds: float, silences=(), rate: int = 16_000) -> Path:
    samples = np.random.default_rng(0).normal(0, 0.2, int(seconds * rate))
    for start, end in silences:
        samples[int(start * rate):int(end * rate)] = 0.0
    soundfile.write(path, samples, rate, subtype="PCM_16")
    return path


def test_run_with_audio_and_an_image(tiny_q4: Path, tmp_path: Path):
    picture = tmp_path / "a.png"
    Image.fromarray(np.full((40, 60, 3), 128, np.uint8)).save(picture)
    clip = write_wav(tmp_path / "a.wav", 2.0)
    for media in (["--audio", str(clip)], ["--audio", str(clip), "--image", str(picture), "--audio", str(clip)]):
        done = phi4mm("run", "--model", str(tiny_q4), *media, "What do you hear?", "--max-tokens", "5",
                      "--threads", "2", "--temperature", "0")
        assert done.returncode == 0, done.stderr
        assert done.stdout.strip()


def test_transcribe_srt_with_a_progress_line_per_window(tiny_q4: Path, tmp_path: Path):
    """40 s with a silence at 27-28 s: two windows, cut inside the silence."""
    clip = write_wav(tmp_path / "talk.wav", 40.0, [(27.0, 28.0)])
    done = phi4mm("transcribe", str(clip), "--model", str(tiny_q4), "--format", "srt", "--threads", "2",
                  "--max-tokens-per-window", "4")
    assert done.returncode == 0, done.stderr
    stamps = re.findall(r"^(\d+)\n00:00:(\d\d),(\d{3}) --> 00:00:(\d\d),(\d{3})$", done.stdout, re.M)
    assert [s[0] for s in stamps] == ["1", "2"] and done.stdout.startswith("1\n00:00:00,000 --> ")
    ends = [int(s[3]) + int(s[4]) / 1000 for s in stamps]
    assert 27.0 <= ends[0] <= 28.0 and ends[1] == 40.0
    progress = [line for line in done.stderr.splitlines() if " window " in line]
    assert [line.split()[2] for line in progress] == ["1/2", "2/2"]


def test_transcribe_verbose_json_and_a_refused_language(tiny_q4: Path, tmp_path: Path):
    clip = write_wav(tmp_path / "short.wav", 2.0)
    done = phi4mm("transcribe", str(clip), "--model", str(tiny_q4), "--format", "verbose_json", "--threads",
                  "2", "--max-tokens-per-window", "3", "--translate-to", "de")
    assert done.returncode == 0, done.stderr
    body = json.loads(done.stdout)
    assert (body["task"], body["language"], body["duration"]) == ("translate", "german", 2.0)
    assert [(s["start"], s["end"]) for s in body["segments"]] == [(0.0, 2.0)]
    done = phi4mm("transcribe", str(clip), "--model", str(tiny_q4), "--language", "xx")
    assert done.returncode == 2 and "language is 'xx'" in done.stderr and "Traceback" not in done.stderr


class FakeModel:
    def __init__(self):
        self.seen: list[list] = []

    def create_chat_completion(self, messages, stream, **options):
        self.seen.append(messages)
        return iter([{"choices": [{"delta": {"content": f"answer{len(self.seen)}"}}]}])


def test_chat_keeps_history_with_images_and_audio(tmp_path: Path):
    from phi4mm.cli.chat import Chat, build_run_args, interactive

    picture, clip = tmp_path / "p.png", tmp_path / "c.wav"
    picture.write_bytes(b"not read by the fake")
    clip.write_bytes(b"not read either")
    model, out = FakeModel(), io.StringIO()
    chat = Chat(model, build_run_args(["--system", "be brief"]), out=out)
    script = f"/image {picture}\n/audio {clip}\nfirst\nsecond\n"
    assert interactive(chat, [], stdin=io.StringIO(script)) == 0
    first, second = model.seen
    assert first[0] == {"role": "system", "content": "be brief"}
    assert first[1]["content"][:2] == [{"type": "image", "image": picture},
                                       {"type": "audio", "audio": clip}]  # attached once
    assert second[:3] == first[:2] + [{"role": "assistant", "content": "answer1"}]
    assert second[3]["content"] == [{"type": "text", "text": "second"}]
    assert out.getvalue() == "answer1\nanswer2\n"


@pytest.mark.parametrize("command", ["run", "serve"])
def test_missing_model_offline_says_what_to_pass(offline_env: dict, command: str):
    done = phi4mm(command, "--model", "nobody-here/no-such-model", *(["hi"] if command == "run" else []),
                  env=offline_env)
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    assert done.stderr.startswith("phi4mm: error:")
    assert "directory" in done.stderr and "phi4mm convert" in done.stderr
    assert "pass `--model DIR`" in done.stderr and f"`phi4mm {command}`" in done.stderr


def test_missing_directory_is_exit_2(tmp_path: Path):
    done = phi4mm("run", "--model", str(tmp_path), "hi")
    assert done.returncode == 2 and "config.json" in done.stderr and "Traceback" not in done.stderr
