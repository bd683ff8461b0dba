"""The OpenAI-compatible server, driven by the official ``openai`` client."""

from __future__ import annotations

import asyncio
import json
import time

import httpx
import openai
import pytest

from maskkv_vllm.engine.llm import LLM
from maskkv_vllm.sampling_params import SamplingParams

from .conftest import API_KEY, metrics, start_server, stop_server

DIFFUSION = {"block_length": 8, "steps": 16}


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=f"{server}/v1", api_key=API_KEY, max_retries=0)


@pytest.fixture(scope="module")
def llm(tiny_dir):
    return LLM(str(tiny_dir), kv_cache_memory="64MiB")


def wait_idle(url, timeout=20.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        m = metrics(url)
        idle = m["maskkv_requests_running"] == 0 and m["maskkv_requests_waiting"] == 0
        if idle and m["maskkv_kv_pages_free"] == m["maskkv_kv_pages_total"]:
            return m
        time.sleep(0.1)
    raise AssertionError(f"server not idle: {m}")


def test_completion_equals_llm_generate(client, llm):
    res = client.completions.create(
        model="tiny-llada", prompt="The capital of France is", max_tokens=16,
        temperature=0, seed=3, extra_body=DIFFUSION,
    )  # fmt: skip
    params = SamplingParams(gen_length=16, block_length=8, steps=16, seed=3)
    (want,) = llm.generate("The capital of France is", params, use_tqdm=False)
    assert res.choices[0].text == want.text
    assert res.choices[0].finish_reason == want.finish_reason
    assert res.usage.completion_tokens == len(want.token_ids)
    assert res.usage.prompt_tokens == len(want.prompt_token_ids)


def test_sampled_completion_equals_llm_generate(client, llm):
    extra = {**DIFFUSION, "kv_policy": "maskkv", "kv_budget": 4}
    res = client.completions.create(
        model="tiny-llada", prompt="Once upon a time", max_tokens=16,
        temperature=0.7, seed=11, extra_body=extra,
    )  # fmt: skip
    params = SamplingParams(gen_length=16, block_length=8, steps=16, temperature=0.7,
                            seed=11, kv_policy="maskkv", kv_budget=4)  # fmt: skip
    assert res.choices[0].text == llm.generate("Once upon a time", params,
                                               use_tqdm=False)[0].text  # fmt: skip
    assert res.model_extra["maskkv"]["evicted_kv_entries"] > 0


def test_chat_equals_llm_chat(client, llm):
    messages = [{"role": "user", "content": "Say hello."}]
    res = client.chat.completions.create(
        model="tiny-llada", messages=messages, max_tokens=16, extra_body=DIFFUSION
    )
    params = SamplingParams(gen_length=16, block_length=8, steps=16)
    (want,) = llm.chat(messages, params, use_tqdm=False)
    assert res.choices[0].message.role == "assistant"
    assert res.choices[0].message.content == want.text


def test_streaming_emits_blocks_that_add_up(client):
    kwargs = {"model": "tiny-llada", "prompt": "Stream me", "max_tokens": 32,
              "extra_body": {"block_length": 8, "steps": 32}}  # fmt: skip
    whole = client.completions.create(**kwargs).choices[0].text
    chunks = list(client.completions.create(stream=True, **kwargs))
    assert "".join(c.choices[0].text for c in chunks) == whole
    assert chunks[-1].choices[0].finish_reason in ("stop", "length")
    assert all(c.choices[0].finish_reason is None for c in chunks[:-1])


def test_streaming_chat(client):
    stream = client.chat.completions.create(
        model="tiny-llada", messages=[{"role": "user", "content": "hi"}],
        max_tokens=16, stream=True, extra_body=DIFFUSION,
    )  # fmt: skip
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert chunks[-1].choices[0].finish_reason in ("stop", "length")


def test_models_health_metrics(client, server):
    assert [m.id for m in client.models.list()] == ["tiny-llada"]
    assert httpx.get(f"{server}/health").text == "ok"
    m = wait_idle(server)
    assert m["maskkv_requests_finished_total"] >= 1
    assert m["maskkv_step_latency_seconds_count"] >= 1


def test_wrong_api_key_is_401(server):
    bad = openai.OpenAI(base_url=f"{server}/v1", api_key="nope", max_retries=0)
    with pytest.raises(openai.AuthenticationError, match="invalid or missing API key"):
        bad.completions.create(model="tiny-llada", prompt="x", max_tokens=8)
    assert httpx.get(f"{server}/v1/models").status_code == 401


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"extra_body": {"kv_policy": "nope"}}, "kv_policy='nope' is not one of"),
        ({"extra_body": {"kv_policy": "maskkv", "kv_budget": 0}}, "kv_budget=0"),
        ({"max_tokens": 30, "extra_body": {"block_length": 8}}, "max_tokens=30 is not"),
        ({"extra_body": {"block_length": 8, "steps": 3}}, "steps=3 is not divisib"),
        ({"prompt": "x" * 700}, "exceeds max_model_len=600"),
        ({"n": 2}, "n=2 is not supported"),
        ({"temperature": -1}, "temperature=-1"),
        ({"prompt": [1, 99999]}, "token id 99999 is outside"),
        ({"extra_body": {"remasking": "greedy"}}, "remasking='greedy'"),
    ],
)
def test_bad_inputs_are_400_with_a_message(client, kwargs, message):
    args = {"model": "tiny-llada", "prompt": "hello", "max_tokens": 16, **kwargs}
    with pytest.raises(openai.BadRequestError, match=message) as info:
        client.completions.create(**args)
    assert info.value.status_code == 400
    assert info.value.body["type"] == "invalid_request_error"


def test_malformed_json_and_bad_shapes_are_400(server):
    headers = {"Authorization": f"Bearer {API_KEY}", "Content-Type": "application/json"}
    for body, message in [
        ("{not json", "not valid JSON"),
        ("[1, 2]", "must be a JSON object"),
        (json.dumps({"prompt": 5}), "prompt must be a string"),
    ]:
        r = httpx.post(f"{server}/v1/completions", content=body, headers=headers)
        assert r.status_code == 400 and message in r.json()["error"]["message"]
    r = httpx.post(f"{server}/v1/chat/completions", json={"messages": []},
                   headers=headers)  # fmt: skip
    assert r.status_code == 400 and "messages" in r.json()["error"]["message"]


def test_disconnect_mid_stream_frees_the_pages(server):
    wait_idle(server)
    body = {"prompt": "a long answer " * 3, "max_tokens": 512, "stream": True,
            "block_length": 8, "steps": 512}  # fmt: skip
    headers = {"Authorization": f"Bearer {API_KEY}"}
    with (
        httpx.Client(timeout=30) as c,
        c.stream("POST", f"{server}/v1/completions", json=body, headers=headers) as r,
    ):
        assert r.status_code == 200
        lines = r.iter_lines()
        first = next(line for line in lines if line.startswith("data:"))
        assert json.loads(first[5:])["choices"][0]["text"] is not None
        busy = metrics(server)
        assert busy["maskkv_kv_pages_free"] < busy["maskkv_kv_pages_total"]
    # The connection is closed mid-stream: the request is aborted, pages return.
    m = wait_idle(server)
    assert m["maskkv_requests_aborted_total"] >= 1


def test_load_200_requests_concurrency_32_mixed(server):
    policies = [("full", None), ("maskkv", 4), ("snapkv", 8), ("streaming", 6),
                ("adakv", 4), ("pyramidkv", 16)]  # fmt: skip

    async def main():
        aclient = openai.AsyncOpenAI(base_url=f"{server}/v1", api_key=API_KEY,
                                     max_retries=0, timeout=120)  # fmt: skip
        sem = asyncio.Semaphore(32)

        async def one(i):
            policy, budget = policies[i % len(policies)]
            extra = {"block_length": 8, "steps": 8, "kv_policy": policy}
            if budget:
                extra["kv_budget"] = budget
            prompt = f"request {i} " + "lorem ipsum " * (i % 23)
            async with sem:
                try:
                    res = await aclient.completions.create(
                        model="tiny-llada", prompt=prompt, max_tokens=8,
                        stream=(i % 5 == 0), extra_body=extra,
                    )  # fmt: skip
                    if i % 5 == 0:
                        return "ok" if [c async for c in res] else "empty"
                    return "ok" if res.choices[0].finish_reason else "no reason"
                except openai.APIStatusError as e:
                    return f"error {e.status_code}: {e.message}"

        return await asyncio.gather(*(one(i) for i in range(200)))

    results = asyncio.run(main())
    errors = [r for r in results if r != "ok"]
    assert not errors, errors[:5]
    m = wait_idle(server)
    assert m["maskkv_requests_finished_total"] >= 200


def test_full_queue_is_503(tiny_dir):
    proc, url = start_server(tiny_dir, "--max-num-seqs", "1", "--max-queue-len", "1")
    try:
        headers = {"Authorization": f"Bearer {API_KEY}"}
        body = {"prompt": "busy " * 10, "max_tokens": 256, "block_length": 8,
                "steps": 256}  # fmt: skip

        async def main():
            async with httpx.AsyncClient(timeout=120) as c:
                return await asyncio.gather(
                    *(c.post(f"{url}/v1/completions", json=body, headers=headers)
                      for _ in range(6))
                )  # fmt: skip

        codes = sorted(r.status_code for r in asyncio.run(main()))
        assert 503 in codes and 200 in codes
        busy = next(r for r in asyncio.run(main()) if r.status_code == 503)
        assert "server is busy" in busy.json()["error"]["message"]
    finally:
        stop_server(proc)


def test_load_with_cancels_loses_nothing(server):
    # 300 requests at concurrency 48: every 5th streamed, every 6th cancelled (a
    # stream closed after its first chunk, or a client that stops waiting).
    wait_idle(server)
    before = metrics(server)
    headers = {"Authorization": f"Bearer {API_KEY}"}

    async def one(c, sem, i):
        policy = ("full", "maskkv", "snapkv")[i % 3]
        body = {"prompt": f"load {i} " + "xy " * (i % 17), "max_tokens": 16,
                **DIFFUSION, "kv_policy": policy}  # fmt: skip
        if i % 3:
            body["kv_budget"] = 4 + i % 5
        cancel, stream = i % 6 == 0, i % 5 == 0 or i % 12 == 0
        async with sem:
            if stream:
                body["stream"] = True
                async with c.stream("POST", "/v1/completions", json=body) as r:
                    text = ""
                    async for line in r.aiter_lines():
                        if line.startswith("data: {"):
                            text += json.loads(line[6:])["choices"][0]["text"]
                            if cancel:
                                return "cancelled"
                    return "ok" if r.status_code == 200 else f"status {r.status_code}"
            try:
                r = await c.post("/v1/completions", json=body,
                                 timeout=0.05 if cancel else 120)  # fmt: skip
            except httpx.TimeoutException:
                return "cancelled"
            return "ok" if r.status_code == 200 else f"status {r.status_code}"

    async def main():
        sem = asyncio.Semaphore(48)
        async with httpx.AsyncClient(
            base_url=server, headers=headers, timeout=120
        ) as c:
            return await asyncio.gather(*(one(c, sem, i) for i in range(300)))

    results = asyncio.run(main())
    assert not [r for r in results if r not in ("ok", "cancelled")], results
    assert results.count("cancelled") >= 30
    m = wait_idle(server)  # every page is back, nothing running or waiting
    new = {k: m[k] - before[k] for k in m if k.endswith("_total")}
    finished, aborted = (
        new[f"maskkv_requests_{k}_total"] for k in ("finished", "aborted")
    )
    # A cancelled request may finish before its abort lands, or (a client that
    # gave up before its body was read) never reach the engine.
    cancelled = results.count("cancelled")
    assert results.count("ok") <= finished and aborted > 0
    assert 300 - cancelled <= finished + aborted <= 300
    assert new["maskkv_requests_failed_total"] == 0
