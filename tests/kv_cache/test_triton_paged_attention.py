"""The Triton kernel matches the torch reference: interpreted on CPU, native on GPU."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("triton")

CHECK = Path(__file__).with_name("triton_check.py")


def test_triton_kernel_under_the_interpreter_matches_torch():
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    done = subprocess.run(
        [sys.executable, str(CHECK), "cpu"],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.count("max abs error") == 5


@pytest.mark.gpu
def test_triton_kernel_on_gpu_matches_torch():
    done = subprocess.run(
        [sys.executable, str(CHECK), "cuda"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout + done.stderr
