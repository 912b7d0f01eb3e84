"""`phi4mm run` / `phi4mm serve` as a user runs them: subprocesses on the tiny converted model,
and the clean exit-2 message when a model cannot be found offline."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
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


class FakeModel:
    def __init__(self):
        self.seen: list[list] = []

    def create_chat_completion(self, messages, stream, **options):
        self.seen.append(messages)
        return iter([{"choices": [{"delta": {"content": f"answer{len(self.seen)}"}}]}])


def test_chat_keeps_history_with_images(tmp_path: Path):
    from phi4mm.chat_cli import Chat, build_run_args, interactive

    picture = tmp_path / "p.png"
    picture.write_bytes(b"not read by the fake")
    model, out = FakeModel(), io.StringIO()
    chat = Chat(model, build_run_args(["--system", "be brief"]), out=out)
    assert interactive(chat, [], stdin=io.StringIO(f"/image {picture}\nfirst\nsecond\n")) == 0
    first, second = model.seen
    assert first[0] == {"role": "system", "content": "be brief"}
    assert first[1]["content"][0] == {"type": "image", "image": picture}  # attached once
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
