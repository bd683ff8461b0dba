"""vLLM's own OpenAI server on a Dream checkpoint, with no flag about Dream.

``VLLM_PLUGINS=maskkv python -m vllm.entrypoints.openai.api_server --model DIR``
on a tiny random Dream (grouped-query attention, ChatML template in its
tokenizer_config.json): the plugin's config class parses ``model_type: "Dream"``
without remote code, and the model's config hook sets up the engine. Driven by
the official ``openai`` client; oracle: the embedded engine.
"""

from __future__ import annotations

import os
import sys

import pytest

pytest.importorskip("vllm")
openai = pytest.importorskip("openai")

from maskkv_vllm.engine.llm import LLM as EmbeddedLLM  # noqa: E402
from maskkv_vllm.models.tiny_dream import write_tiny_dream_checkpoint  # noqa: E402
from maskkv_vllm.sampling_params import SamplingParams  # noqa: E402

pytestmark = [pytest.mark.vllm, pytest.mark.slow]

HELLO = [256, 72, 101, 108, 108, 111]


@pytest.fixture(scope="module")
def dream_dir(tmp_path_factory):
    return write_tiny_dream_checkpoint(tmp_path_factory.mktemp("dream"), seed=1)


@pytest.fixture(scope="module")
def server(dream_dir, tmp_path_factory, start_server):
    log = tmp_path_factory.mktemp("dream_serve") / "server.log"
    env = {
        **os.environ,
        "VLLM_ENABLE_V1_MULTIPROCESSING": "1",
        "VLLM_PLUGINS": "maskkv",
    }

    def cmd(port):
        return [
            sys.executable, "-m", "vllm.entrypoints.openai.api_server",
            "--model", str(dream_dir), "--host", "127.0.0.1", "--port", str(port),
            "--dtype", "float32", "--max-model-len", "512",
            "--served-model-name", "dream",
        ]  # fmt: skip

    srv = start_server(cmd, env, log)
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key="none", timeout=120)


@pytest.fixture(scope="module")
def embedded(dream_dir):
    return EmbeddedLLM(str(dream_dir), kv_policy="full", dtype="float32")


def test_completion_tokens_equal_the_embedded_engine_s(client, embedded):
    resp = client.completions.create(
        model="dream", prompt=HELLO, max_tokens=32, temperature=0.0,
        extra_body={"return_token_ids": True},
    )  # fmt: skip
    params = SamplingParams(gen_length=32, block_length=32, steps=32)
    (want,) = embedded.generate([HELLO], params, use_tqdm=False)
    assert resp.choices[0].token_ids[: len(want.token_ids)] == want.token_ids


def test_maskkv_per_request_with_the_dual_canvas_cache(client, embedded):
    prompt = [256] + [70 + i % 20 for i in range(150)]
    xargs = {
        "maskkv_kv_policy": "maskkv", "maskkv_kv_budget": 16,
        "maskkv_block_length": 8, "maskkv_steps": 16, "maskkv_canvas_cache": "dual",
    }  # fmt: skip
    resp = client.completions.create(
        model="dream", prompt=prompt, max_tokens=32, temperature=0.0,
        extra_body={"return_token_ids": True, "vllm_xargs": xargs},
    )  # fmt: skip
    params = SamplingParams(
        gen_length=32, block_length=8, steps=16, kv_policy="maskkv", kv_budget=16,
        canvas_cache="dual",
    )  # fmt: skip
    (want,) = embedded.generate([prompt], params, use_tqdm=False)
    assert resp.choices[0].token_ids[: len(want.token_ids)] == want.token_ids


def test_chat_renders_the_checkpoint_s_template(client, embedded):
    messages = [{"role": "user", "content": "Hi"}]
    resp = client.chat.completions.create(
        model="dream", messages=messages, max_tokens=32, temperature=0.0,
        extra_body={"return_token_ids": True},
    )  # fmt: skip
    params = SamplingParams(gen_length=32, block_length=32, steps=32)
    (want,) = embedded.chat(messages, params, use_tqdm=False)
    assert resp.prompt_token_ids == want.prompt_token_ids
    assert resp.choices[0].token_ids[: len(want.token_ids)] == want.token_ids
