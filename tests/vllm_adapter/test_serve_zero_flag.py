"""vLLM's own OpenAI server on an LLaDA checkpoint with no LLaDA flag at all.

``VLLM_PLUGINS=maskkv python -m vllm.entrypoints.openai.api_server --model DIR``
(the CPU wheel's ``vllm serve``, whose console script is broken upstream), with
a batched-token limit smaller than a request: the model's config hook sets up
LLaDA's engine. Driven by the official ``openai`` client; oracle: the embedded
engine with vLLM's defaults for a bare ``max_tokens`` (one block of 32 or the
whole canvas, one token per step).
"""

from __future__ import annotations

import os
import sys

import pytest

pytest.importorskip("vllm")
openai = pytest.importorskip("openai")

from maskkv_vllm.engine.llm import LLM as EmbeddedLLM  # noqa: E402
from maskkv_vllm.sampling_params import SamplingParams  # noqa: E402

pytestmark = [pytest.mark.vllm, pytest.mark.slow]

MAX_LEN = 512


@pytest.fixture(scope="module")
def server(vllm_tiny_dir, tmp_path_factory, start_server):
    log = tmp_path_factory.mktemp("zero_flag") / "server.log"
    env = {
        **os.environ,
        "VLLM_ENABLE_V1_MULTIPROCESSING": "1",
        "VLLM_PLUGINS": "maskkv",
    }

    def cmd(port):
        return [
            sys.executable, "-m", "vllm.entrypoints.openai.api_server",
            "--model", str(vllm_tiny_dir), "--host", "127.0.0.1", "--port", str(port),
            "--dtype", "float32", "--max-model-len", str(MAX_LEN),
            "--max-num-batched-tokens", "64", "--served-model-name", "tiny",
        ]  # fmt: skip

    srv = start_server(cmd, env, log)
    print(f"zero-flag vLLM server healthy after {srv.startup_s:.0f} s")
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key="none", timeout=120)


def _want(vllm_tiny_dir, prompt_ids, gen):
    params = SamplingParams(
        gen_length=gen, block_length=32 if gen % 32 == 0 else gen, steps=gen
    )
    ref = EmbeddedLLM(str(vllm_tiny_dir), kv_policy="full", dtype="float32")
    (out,) = ref.generate([prompt_ids], params, use_tqdm=False)
    return out.token_ids


def _complete(client, prompt_ids, max_tokens):
    resp = client.completions.create(
        model="tiny", prompt=prompt_ids, max_tokens=max_tokens, temperature=0.0,
        extra_body={"return_token_ids": True},
    )  # fmt: skip
    return resp.choices[0].token_ids


def test_greedy_output_is_the_embedded_engine_s(client, vllm_tiny_dir):
    prompt = [256, 72, 101, 108, 108, 111]
    want = _want(vllm_tiny_dir, prompt, 32)
    assert _complete(client, prompt, 32)[: len(want)] == want


def test_a_request_larger_than_the_token_budget_runs(client, server, vllm_tiny_dir):
    prompt = [256] + [66] * 99  # M + L = 132 > --max-num-batched-tokens 64
    want = _want(vllm_tiny_dir, prompt, 32)
    assert _complete(client, prompt, 32)[: len(want)] == want
    assert server.healthy()


def test_a_request_that_fills_max_model_len_runs(client, server, vllm_tiny_dir):
    prompt = [256] + [67] * (MAX_LEN - 33)  # M + L == max_model_len
    want = _want(vllm_tiny_dir, prompt, 32)
    assert _complete(client, prompt, 32)[: len(want)] == want
    assert server.healthy()


def test_max_tokens_past_max_model_len_is_clamped_as_vllm_does(client, server):
    # vLLM's front end shortens max_tokens to what fits; the canvas follows it
    prompt = [256] + [68] * (MAX_LEN - 32)  # 481 tokens: 31 canvas slots fit
    ids = _complete(client, prompt, 32)
    assert 0 < len(ids) <= MAX_LEN - len(prompt)
    assert server.healthy()


def test_a_prompt_of_max_model_len_is_a_400(client, server):
    with pytest.raises(openai.BadRequestError) as err:
        _complete(client, [256] + [69] * (MAX_LEN - 1), 8)
    assert err.value.status_code == 400
    # no canvas slot is left: vLLM clamps max_tokens to 0 and refuses it
    assert "max_tokens" in err.value.message
    assert server.healthy()


def test_streaming_sends_each_committed_block(client):
    prompt = [256, 72, 101, 108, 108, 111]
    xargs = {"maskkv_block_length": 8, "maskkv_steps": 16}
    whole = client.completions.create(
        model="tiny", prompt=prompt, max_tokens=32, temperature=0.0,
        extra_body={"return_token_ids": True, "vllm_xargs": xargs},
    ).choices[0].token_ids  # fmt: skip
    chunks = [
        c.choices[0].token_ids
        for c in client.completions.create(
            model="tiny",
            prompt=prompt,
            max_tokens=32,
            temperature=0.0,
            stream=True,
            extra_body={"return_token_ids": True, "vllm_xargs": xargs},
        )  # fmt: skip
        if c.choices and c.choices[0].token_ids
    ]
    assert [t for c in chunks for t in c] == whole
    # 4 blocks of 8: one chunk per block (fewer only if a stop id ended it early)
    assert len(chunks) == -(-len(whole) // 8)
    assert all(len(c) == 8 for c in chunks[:-1])


@pytest.mark.parametrize(
    ("kwargs", "param"),
    [
        ({"n": 2}, "n"),
        ({"logprobs": 2}, "logprobs"),
        ({"extra_body": {"kv_policy": "nope"}}, "kv_policy"),
    ],
)
def test_the_plain_server_applies_the_embedded_server_s_rules(client, kwargs, param):
    # Issue 25: the endpoint plugin "maskkv" (allowed by VLLM_PLUGINS) checks the
    # body in a plain `vllm serve` too; these were a 200, a 500 and a 200.
    with pytest.raises(openai.BadRequestError) as err:
        client.completions.create(model="tiny", prompt="Hello", max_tokens=8, **kwargs)
    assert err.value.body["param"] == param


def test_chat_needs_no_template_flag(client, vllm_tiny_dir):
    # Issue 25, item 7: the checkpoint carries LLaDA's template in
    # tokenizer_config.json, as real LLaDA checkpoints do (was: "default chat
    # template is no longer allowed", HTTP 400).
    messages = [{"role": "user", "content": "Hi"}]
    resp = client.chat.completions.create(
        model="tiny", messages=messages, max_tokens=32, temperature=0.0,
        extra_body={"return_token_ids": True},
    )  # fmt: skip
    ref = EmbeddedLLM(str(vllm_tiny_dir), kv_policy="full", dtype="float32")
    (want,) = ref.chat(
        messages, SamplingParams(gen_length=32, block_length=32, steps=32),
        use_tqdm=False,
    )  # fmt: skip
    got = resp.choices[0].token_ids
    assert got[: len(want.token_ids)] == want.token_ids
