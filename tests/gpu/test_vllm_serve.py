"""``VLLM_PLUGINS=maskkv vllm serve DIR`` on CUDA: vLLM's own console script and
multiprocess engine (API server + engine core), no LLaDA flag.

Started as a subprocess with the CPU lane's ``Server`` helper
(``tests/vllm_adapter/conftest.py``); healthy on ``/health``, one
``/v1/completions`` request compared with the embedded engine on CUDA (fp32:
exact), then stopped. Needs the plugin's entry point in the environment (the
engine core is another process).
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import urllib.request
from pathlib import Path

import pytest

pytest.importorskip("vllm")

from maskkv_vllm.engine.llm import LLM as EmbeddedLLM  # noqa: E402
from maskkv_vllm.models.tiny import write_tiny_checkpoint  # noqa: E402
from maskkv_vllm.sampling_params import SamplingParams  # noqa: E402
from tests.gpu.conftest import require_plugin_entry_point  # noqa: E402
from tests.vllm_adapter.conftest import Server, free_port  # noqa: E402

pytestmark = [pytest.mark.gpu, pytest.mark.vllm, pytest.mark.slow]

HELLO = [256, 72, 101, 108, 108, 111]


def _vllm_script() -> str:
    found = shutil.which("vllm") or str(Path(sys.executable).with_name("vllm"))
    if not Path(found).is_file():
        pytest.skip("no `vllm` console script next to this Python or on PATH")
    return found


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    require_plugin_entry_point()
    tmp = tmp_path_factory.mktemp("serve_gpu")
    ckpt = write_tiny_checkpoint(tmp / "tiny", seed=0, head_dim=32)
    env = {**os.environ, "VLLM_PLUGINS": "maskkv", "HF_HUB_OFFLINE": "1"}
    for key in ("VLLM_ENABLE_V1_MULTIPROCESSING", "VLLM_TARGET_DEVICE"):
        env.pop(key, None)  # vLLM's defaults: engine core in its own process
    port = free_port()
    cmd = [
        _vllm_script(), "serve", str(ckpt), "--host", "127.0.0.1",
        "--port", str(port), "--dtype", "float32", "--max-model-len", "512",
        "--served-model-name", "tiny", "--gpu-memory-utilization", "0.25",
    ]  # fmt: skip
    srv = Server(cmd, env, tmp / "server.log", port)
    yield srv, ckpt
    srv.stop()


def test_vllm_serve_starts_and_completes_like_the_embedded_engine(server):
    srv, ckpt = server
    body = {
        "model": "tiny", "prompt": HELLO, "max_tokens": 16, "temperature": 0.0,
        "return_token_ids": True,
    }  # fmt: skip
    request = urllib.request.Request(
        f"{srv.url}/v1/completions",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=120) as resp:
        choice = json.loads(resp.read())["choices"][0]
    # A bare max_tokens: one block of 16, one token per step (params.py).
    params = SamplingParams(gen_length=16, block_length=16, steps=16)
    (want,) = EmbeddedLLM(
        str(ckpt), device="cuda", dtype="float32", kv_cache_memory="1GiB"
    ).generate([HELLO], params, use_tqdm=False)
    assert choice["token_ids"][: len(want.token_ids)] == want.token_ids
    # Healthy means the config hook chose our CUDA worker and vLLM's V1 runner
    # (MaskKVGPUWorker refuses to start on Model Runner V2).
    assert srv.healthy()
