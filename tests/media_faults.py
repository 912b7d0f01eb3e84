"""Test-only fault injection for the media decoder processes: with PHI4MM_MEDIA_TEST_HOOK set to
"media_faults:hook" (tests/ on the path), a decoder process runs `hook` before each decode. Bytes
that start with MARKER make it misbehave as the rest of the marker line says; any other bytes
decode as usual. Requests cannot reach this: a decoder process reads the variable at start-up,
and only the test suite sets it."""

from __future__ import annotations

import os
import signal
import time

MARKER = b"PHI4MM-FAULT:"
PID_FILE_ENV = "MEDIA_FAULTS_PID_FILE"  # where a decoder writes its pid when a fault starts (if set)


def fault(action: str) -> bytes:
    """Bytes that make a decoder process with the hook `action`: crash, hang, oom, or sleep:SECONDS."""
    return MARKER + action.encode() + b"\n"


def hook(kind: str, data: bytes) -> None:
    if not data.startswith(MARKER):
        return
    action = data[len(MARKER):].split(b"\n", 1)[0].decode()
    if os.environ.get(PID_FILE_ENV):
        with open(os.environ[PID_FILE_ENV], "w") as f:
            f.write(str(os.getpid()))
    if action == "crash":
        os.kill(os.getpid(), signal.SIGSEGV)
    elif action == "hang":
        time.sleep(3600)
    elif action == "spin":
        while True:
            pass
    elif action == "oom":
        hoard = []
        while True:
            hoard.append(bytearray(64 << 20))
    elif action.startswith("sleep:"):
        time.sleep(float(action.split(":", 1)[1]))
