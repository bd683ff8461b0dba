"""``maskkv serve --replicas 2`` stopped by its PID exits quietly (issue 25, item 11).

Ray's driver installs a SIGTERM handler that prints a ``SIGTERM received ...
clock_nanosleep`` stack dump and aborts; ``ray_serve.run`` replaces it after
``ray.init`` so ``kill PID`` deletes the app and shuts Ray down like Ctrl-C.
"""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
import urllib.request

import pytest

pytest.importorskip("ray")

pytestmark = pytest.mark.ray
STARTUP_S = 180


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until_serving(proc: subprocess.Popen, log, port: int) -> None:
    """Both replicas up: /health answers and ``run`` logged that it serves."""
    deadline = time.monotonic() + STARTUP_S
    while time.monotonic() < deadline:
        assert proc.poll() is None, log.read_text()[-4000:]
        if "serving tiny on" in log.read_text():
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health") as r:
                assert r.status == 200
            return
        time.sleep(1)
    raise TimeoutError(log.read_text()[-4000:])


def test_sigterm_stops_the_replicas_without_a_stack_dump(tmp_path):
    port, log = free_port(), tmp_path / "serve.log"
    cmd = [
        sys.executable, "-m", "maskkv_vllm.cli", "serve", "tiny",
        "--replicas", "2", "--port", str(port), "--kv-cache-memory", "32MiB",
    ]  # fmt: skip
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_until_serving(proc, log, port)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0  # was -6: Ray's handler aborts
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    text = log.read_text()
    assert "SIGTERM received" not in text and "clock_nanosleep" not in text, text
    assert "Traceback" not in text, text
    assert "stopping the replicas" in text
