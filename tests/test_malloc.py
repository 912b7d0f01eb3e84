"""phi4mm/engine/malloc.py: on glibc the mmap threshold is fixed once per process (the loaded model does it)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from phi4mm.engine import malloc


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt is Linux-only")
def test_threshold_fixed_once_and_env_respected():
    assert malloc.fix_mmap_threshold() is True
    assert malloc.fix_mmap_threshold() is True  # idempotent
    code = "from phi4mm.engine import malloc; print(malloc.fix_mmap_threshold())"
    env_set = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                             env={"MALLOC_MMAP_THRESHOLD_": "65536", "PATH": ""})
    assert env_set.stdout.strip() == "False"  # the user's own setting wins
