"""``serve.main``: vLLM's OpenAI server with LLaDA + MaskKV, queried by ``openai``.

Starts the server in a subprocess on 127.0.0.1 (tiny checkpoint, ~40 s to become
healthy on 2 cores), sends ``/v1/completions`` with MaskKV params as
``vllm_xargs`` and compares with the embedded engine.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time

import pytest

pytest.importorskip("vllm")
openai = pytest.importorskip("openai")

from maskkv_vllm.engine.llm import LLM as EmbeddedLLM  # noqa: E402
from maskkv_vllm.sampling_params import SamplingParams  # noqa: E402
from maskkv_vllm.vllm_adapter.serve import serve_args  # noqa: E402

pytestmark = [pytest.mark.vllm, pytest.mark.slow]

STARTUP_S = 180


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_healthy(proc: subprocess.Popen, port: int) -> None:
    import urllib.request

    deadline = time.monotonic() + STARTUP_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2):
                return
        except OSError:
            time.sleep(1)
    raise TimeoutError(f"server not healthy after {STARTUP_S} s")


@pytest.fixture(scope="module")
def server(vllm_tiny_dir, tmp_path_factory):
    port = _free_port()
    log = tmp_path_factory.mktemp("serve") / "server.log"
    env = {**os.environ, "VLLM_ENABLE_V1_MULTIPROCESSING": "1"}
    env.pop("VLLM_PLUGINS", None)  # serve.main sets "maskkv"
    argv = [
        str(vllm_tiny_dir), "--host", "127.0.0.1", "--port", str(port),
        "--dtype", "float32", "--max-model-len", "512", "--served-model-name", "tiny",
        "--additional-config", '{"maskkv": {"kv_policy": "snapkv", "kv_budget": 4}}',
    ]  # fmt: skip
    code = f"from maskkv_vllm.vllm_adapter.serve import main; main({argv!r})"
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, "-c", code], env=env, stdout=out,
                                stderr=subprocess.STDOUT)  # fmt: skip
    try:
        _wait_healthy(proc, port)
        yield port
    except Exception:
        print(log.read_text()[-4000:])
        raise
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def test_serve_args_add_our_hooks_only_when_absent():
    from maskkv_vllm.vllm_adapter.validation import VALIDATOR_CLS

    args = serve_args(["m", "--worker-cls=x.Y"])
    assert args[:2] == ["m", "--worker-cls=x.Y"]
    assert "--scheduler-cls" in args and args.count("--worker-cls") == 0
    assert "--enforce-eager" in args
    assert args[args.index("--logits-processors") + 1] == VALIDATOR_CLS


@pytest.mark.parametrize(
    ("xargs", "named"),
    [
        # gen_length = max_tokens = 16; 5 does not divide it.
        ({"maskkv_block_length": 5}, ["maskkv_block_length=5", "block_length=5"]),
        ({"maskkv_kv_policy": "nope"}, ["maskkv_kv_policy='nope'"]),
        ({"maskkv_steps": 0}, ["steps=0 must be a positive integer"]),
    ],
)
def test_bad_params_get_http_400_naming_the_value(server, xargs, named):
    import urllib.request

    client = openai.OpenAI(base_url=f"http://127.0.0.1:{server}/v1", api_key="none")
    with pytest.raises(openai.BadRequestError) as err:
        client.completions.create(
            model="tiny", prompt="Hello", max_tokens=16,
            extra_body={"vllm_xargs": xargs},
        )  # fmt: skip
    assert err.value.status_code == 400
    for text in named:
        assert text in err.value.message
    # Refused in the front end: the engine core is still alive.
    with urllib.request.urlopen(f"http://127.0.0.1:{server}/health", timeout=5) as r:
        assert r.status == 200


def test_completions_through_the_openai_client(server, vllm_tiny_dir):
    client = openai.OpenAI(base_url=f"http://127.0.0.1:{server}/v1", api_key="none")
    resp = client.completions.create(
        model="tiny",
        prompt=["Hello", "The cat"],
        max_tokens=16,
        temperature=0.0,
        extra_body={
            "vllm_xargs": {"maskkv_block_length": 8, "maskkv_steps": 8},
            "return_token_ids": True,
        },
    )
    # Defaults from --additional-config: snapkv with B = 4 (prompts of 6-8 tokens).
    params = SamplingParams(
        gen_length=16, block_length=8, steps=8, kv_policy="snapkv", kv_budget=4
    )
    ref = EmbeddedLLM(str(vllm_tiny_dir), kv_policy="full")
    want = ref.generate(["Hello", "The cat"], params, use_tqdm=False)
    got = sorted(resp.choices, key=lambda c: c.index)
    assert [c.token_ids for c in got] == [w.token_ids for w in want]
    # vLLM's incremental detokenizer holds back a trailing incomplete UTF-8
    # sequence (random tiny weights emit raw bytes); the rest is identical.
    assert [c.text.rstrip("\ufffd") for c in got] == [
        w.text.rstrip("\ufffd") for w in want
    ]
    assert resp.usage.completion_tokens == 32
