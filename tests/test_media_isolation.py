"""phi4mm/media/isolation.py: media decoding in worker processes. The decoded pixels and samples are
the in-process ones; a refusal keeps its message and its worker; a worker that crashes, hangs,
spins, runs out of memory or is killed fails only its own task, and is replaced. Faults come from
tests/media_faults.py, which a decoder process loads only when PHI4MM_MEDIA_TEST_HOOK names it."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from media_faults import fault
from PIL import Image

from phi4mm.errors import AudioError, ConfigError, MediaError
from phi4mm.media import MediaLimits
from phi4mm.media.decoder_process import HOOK_ENV
from phi4mm.media.isolation import DecoderPool, InProcess, PoolSettings, media_loader

TESTS = Path(__file__).resolve().parent
SETTINGS = PoolSettings(n_workers=2, deadline_s=4.0, memory_mb=256, cpu_s=1.0)


@pytest.fixture(scope="module")
def pool():
    saved = dict(os.environ)
    os.environ[HOOK_ENV] = "media_faults:hook"  # read by each decoder process when it starts
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(TESTS), os.environ.get("PYTHONPATH")]))
    try:
        decoders = DecoderPool(SETTINGS)  # takes the environment as it is now, for every worker
    finally:
        os.environ.clear()
        os.environ.update(saved)
    yield decoders
    decoders.close()


def image_bytes(fmt: str, size=(64, 48), seed=0) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, fmt)
    return out.getvalue()


def audio_bytes(fmt: str, subtype: str, rate=16000, seconds=0.5) -> bytes:
    t = np.arange(int(rate * seconds)) / rate
    out = io.BytesIO()
    sf.write(out, (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32), rate, format=fmt, subtype=subtype)
    return out.getvalue()


def _wait_for(condition, timeout_s=30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP", "GIF"])
def test_images_decode_exactly_as_in_process(pool, fmt):
    data = image_bytes(fmt)
    ours, theirs = pool.load_image(data), InProcess().load_image(data)
    assert ours.mode == theirs.mode == "RGB" and ours.size == theirs.size
    assert np.array_equal(np.asarray(ours), np.asarray(theirs))


@pytest.mark.parametrize("fmt, subtype", [("WAV", "PCM_16"), ("FLAC", "PCM_16"), ("OGG", "VORBIS"),
                                         ("MP3", "MPEG_LAYER_III")])
def test_audio_decodes_exactly_as_in_process(pool, fmt, subtype):
    data = audio_bytes(fmt, subtype)
    ours, theirs = pool.decode_audio(data), InProcess().decode_audio(data)
    assert ours.sample_rate_hz == theirs.sample_rate_hz and ours.samples.dtype == np.float32
    assert np.array_equal(ours.samples, theirs.samples)


def test_sources_that_are_no_encoded_bytes_stay_in_process(pool):
    picture = Image.new("RGB", (5, 4), "red")
    assert pool.load_image(picture).size == (5, 4)
    clip = pool.load_audio((np.zeros(800, np.float32), 8000))
    assert clip.sample_rate_hz == 8000 and len(clip.samples) == 800


def test_a_refusal_keeps_its_message_and_its_worker(pool):
    before, replaced = pool.pids(), pool.replaced
    data = b"not an image at all, just text"
    with pytest.raises(MediaError) as ours:
        pool.load_image(data)
    with pytest.raises(MediaError) as theirs:
        InProcess().load_image(data)
    assert str(ours.value) == str(theirs.value)
    with pytest.raises(AudioError, match="truncated|not|no audio|could not"):
        pool.decode_audio(b"RIFF\x00\x00\x00\x00WAVEjunk")
    assert pool.pids() == before and pool.replaced == replaced


def test_limits_are_checked_in_the_worker_too(pool):
    data = image_bytes("PNG", size=(100, 100))
    with pytest.raises(MediaError, match="over max_pixels=5000"):
        pool.load_image(data, MediaLimits(max_pixels=5000))


@pytest.mark.parametrize("action, says, error", [
    ("crash", "crashed \\(SIGSEGV\\)", MediaError),
    ("oom", "ran out of memory \\(limit 256 MiB\\)", MediaError),
    ("spin", "ran past its CPU-time limit", AudioError),
    ("hang", "ran past its 4 s deadline and was stopped", AudioError),
])
def test_a_failing_decoder_fails_only_its_task_and_is_replaced(pool, action, says, error):
    replaced, before = pool.replaced, set(pool.pids())
    started = time.monotonic()
    with pytest.raises(error, match=says):
        if error is AudioError:
            pool.decode_audio(fault(action), origin="the clip")
        else:
            pool.load_image(fault(action))
    assert time.monotonic() - started < SETTINGS.deadline_s + 3
    assert pool.replaced == replaced + 1
    _wait_for(lambda: len(pool.pids()) == SETTINGS.n_workers)
    assert set(pool.pids()) != before
    assert pool.load_image(image_bytes("PNG")).size == (64, 48)  # the next one decodes


def test_a_worker_killed_mid_decode_fails_that_request_only(pool):
    outcome = {}

    def slow():
        try:
            pool.load_image(fault("sleep:3"))
        except MediaError as exc:
            outcome["error"] = str(exc)

    thread = threading.Thread(target=slow)
    thread.start()
    _wait_for(lambda: pool._idle.qsize() == SETTINGS.n_workers - 1)  # the sleeping decode has a worker
    idle = {w.process.pid for w in list(pool._idle.queue)}
    (busy,) = set(pool.pids()) - idle
    time.sleep(0.5)
    os.kill(busy, signal.SIGKILL)
    others = [pool.load_image(image_bytes("PNG", seed=i)) for i in range(3)]  # meanwhile, the other worker
    thread.join(10)
    assert "was killed (SIGKILL" in outcome["error"]
    assert all(o.size == (64, 48) for o in others)


def test_many_threads_share_two_workers(pool):
    datas = [image_bytes("PNG", seed=i) for i in range(8)]
    results = [None] * len(datas)

    def work(i):
        results[i] = np.asarray(pool.load_image(datas[i]))

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(datas))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    for data, result in zip(datas, results, strict=True):
        assert np.array_equal(result, np.asarray(InProcess().load_image(data)))


def test_settings_are_checked_and_zero_workers_means_in_process():
    with pytest.raises(ConfigError, match="deadline_s"):
        PoolSettings(deadline_s=0)
    assert type(media_loader(0)) is InProcess


def test_workers_start_whatever_the_callers_main_module_is(tmp_path):
    """Workers run `python -m phi4mm.media.decoder_process`: a program read from stdin (no importable
    __main__) and one that is not guarded by `if __name__ == "__main__"` decode, and are not run again."""
    program = ("import io, numpy as np\nfrom PIL import Image\nfrom phi4mm.media import DecoderPool\n"
               "print('started', flush=True)\npool = DecoderPool()\nout = io.BytesIO()\n"
               "Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(out, 'PNG')\n"
               "print(pool.load_image(out.getvalue()).size)\npool.close()\n")
    script = tmp_path / "unguarded.py"
    script.write_text(program)
    for args, stdin in (([sys.executable, "-"], program), ([sys.executable, str(script)], None)):
        done = subprocess.run(args, input=stdin, capture_output=True, text=True, timeout=120, cwd=tmp_path)
        assert done.returncode == 0, done.stderr
        assert done.stdout.split("\n")[:2] == ["started", "(8, 8)"], done.stdout
