"""A live ``maskkv serve`` on 127.0.0.1 for the HTTP tests."""

from __future__ import annotations

import socket
import subprocess
import sys
import time

import httpx
import pytest

API_KEY = "test-key"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(model_dir, *extra: str):
    port = free_port()
    cmd = [
        sys.executable, "-m", "maskkv_vllm.cli", "serve", str(model_dir),
        "--port", str(port), "--api-key", API_KEY, "--served-model-name", "tiny-llada",
        "--log-level", "warning", *extra,
    ]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited: {proc.stdout.read().decode()}")
        try:
            if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            time.sleep(0.2)
    proc.kill()
    raise RuntimeError("server did not come up in 60 s")


def stop_server(proc) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()


@pytest.fixture(scope="module")
def server(tiny_dir):
    proc, url = start_server(
        tiny_dir, "--kv-cache-memory", "64MiB", "--max-num-seqs", "32",
        "--max-model-len", "600",
    )  # fmt: skip
    yield url
    stop_server(proc)


def metrics(url: str) -> dict[str, float]:
    text = httpx.get(f"{url}/metrics").text
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#") and "{" not in line:
            name, value = line.split()
            out[name] = float(value)
    return out
