"""The HTTP front end under the probes of issue 14: size limits, OpenAI compatibility,
the front door (Host, Content-Type, key), and aborts of clients that leave."""

from __future__ import annotations

import json

import httpx
import pytest
from starlette.testclient import TestClient

from maskkv_vllm.config import CacheConfig, EngineConfig
from maskkv_vllm.engine.llm_engine import LLMEngine
from maskkv_vllm.entrypoints.openai_server import build_app
from maskkv_vllm.entrypoints.server_config import ServerConfig, host_name
from tests.engine.conftest import API_KEY, metrics, start_server, stop_server

SMALL = {"max_tokens": 8, "block_length": 8, "steps": 8}


def make_engine(tiny, num_pages=400, **kw):
    model, tok = tiny
    cache = CacheConfig("paged", page_size=16, num_pages=num_pages)
    config = EngineConfig(cache=cache, max_model_len=600, **kw)
    return LLMEngine(config, model, tok)


@pytest.fixture(scope="module")
def app_engine(tiny):
    return make_engine(tiny)


@pytest.fixture(scope="module")
def client(app_engine):
    server = ServerConfig(model_name="tiny-llada", max_request_bytes=2**20)
    with TestClient(build_app(app_engine, server)) as c:
        yield c


def post(client, body, path="/v1/completions", **kw):
    return client.post(path, content=json.dumps(body),
                       headers={"content-type": "application/json"}, **kw)  # fmt: skip


def error(r) -> dict:
    return r.json()["error"]


# -- item 2: bounded input ------------------------------------------------------


def test_a_body_over_the_limit_is_413_before_it_is_read(client):
    big = json.dumps({"prompt": "x" * (2**20 + 10)})
    r = client.post("/v1/completions", content=big,
                    headers={"content-type": "application/json"})  # fmt: skip
    assert r.status_code == 413
    assert "max_request_bytes=1048576" in error(r)["message"]


def test_a_chunked_body_over_the_limit_is_413(client):
    def chunks():
        yield b'{"prompt": "'
        for _ in range(20):
            yield b"y" * 2**16
        yield b'"}'

    r = client.post("/v1/completions", content=chunks(),
                    headers={"content-type": "application/json"})  # fmt: skip
    assert r.status_code == 413


def test_a_prompt_far_beyond_max_model_len_is_refused_without_tokenizing(
    app_engine, monkeypatch
):
    calls = []
    tok = app_engine.tokenizer
    real = tok.encode
    monkeypatch.setattr(tok, "encode", lambda *a, **k: calls.append(1) or real(*a, **k))
    with pytest.raises(ValueError, match=r"prompt of at least 27595 tokens \(524288"):
        app_engine.make_request("z" * 2**19)
    assert calls == []  # refused by its size alone
    app_engine.make_request("z" * 100)  # a short one is tokenized as before
    assert calls == [1]


def test_nesting_too_deep_is_400_not_a_plain_text_500(client):
    deep = "[" * 100_000 + "]" * 100_000
    r = client.post("/v1/completions", content='{"prompt": ' + deep + "}",
                    headers={"content-type": "application/json"})  # fmt: skip
    assert r.status_code == 400 and "nested too deeply" in error(r)["message"]


# -- item 8: OpenAI compatibility -----------------------------------------------


@pytest.mark.parametrize(
    ("field", "param", "message"),
    [
        ({"max_tokens": 0}, "max_tokens", "max_tokens=0 must be at least 1"),
        ({"min_p": 0.5}, "min_p", "min_p=0.5 is not supported"),
        ({"frequency_penalty": 0.5}, "frequency_penalty", "not supported"),
        ({"presence_penalty": 1}, "presence_penalty", "not supported"),
        ({"response_format": {"type": "json_object"}}, "response_format", "not supp"),
        ({"stream": "false"}, "stream", "stream='false' must be a boolean"),
        ({"temperature": "hot"}, "temperature", "must be a number"),
        ({"max_tokens": "8"}, "max_tokens", "must be an integer"),
        ({"n": True}, "n", "n=True is not supported"),
        ({"stream_options": {"include_usage": True}}, "stream_options", "stream=true"),
        ({"max_tokens": 8, "steps": 16}, "steps", "exceeds gen_length"),
    ],
)
def test_bad_fields_are_400_naming_the_param(client, field, param, message):
    r = post(client, {"prompt": "a", **field})
    assert r.status_code == 400, r.text
    assert error(r)["param"] == param and message in error(r)["message"]


def test_infinity_is_not_json(client):
    body = '{"prompt": "a", "temperature": Infinity}'
    r = client.post("/v1/completions", content=body,
                    headers={"content-type": "application/json"})  # fmt: skip
    assert (
        r.status_code == 400 and "Infinity is not a JSON value" in error(r)["message"]
    )


def test_another_model_name_is_404(client):
    r = post(client, {"prompt": "a", "model": "gpt-4", **SMALL})
    assert r.status_code == 404
    assert error(r)["message"] == "The model `gpt-4` does not exist."
    assert (
        post(client, {"prompt": "a", "model": "tiny-llada", **SMALL}).status_code == 200
    )


def test_a_list_of_prompts_gets_one_choice_each(client):
    prompts = ["first prompt", "second", [65, 66, 67]]
    r = post(client, {"prompt": prompts, **SMALL})
    assert r.status_code == 200, r.text
    body = r.json()
    assert [c["index"] for c in body["choices"]] == [0, 1, 2]
    alone = [post(client, {"prompt": p, **SMALL}).json() for p in prompts]
    assert [c["text"] for c in body["choices"]] == [
        a["choices"][0]["text"] for a in alone
    ]
    assert body["usage"]["prompt_tokens"] == sum(
        a["usage"]["prompt_tokens"] for a in alone
    )


def test_include_usage_sends_a_last_usage_chunk(client):
    body = {"prompt": ["one", "two"], "stream": True,
            "stream_options": {"include_usage": True}, **SMALL}  # fmt: skip
    with client.stream("POST", "/v1/completions", content=json.dumps(body),
                       headers={"content-type": "application/json"}) as r:  # fmt: skip
        events = [line[6:] for line in r.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] > 0
    finished = {c["choices"][0]["index"] for c in chunks[:-1]
                if c["choices"][0]["finish_reason"]}  # fmt: skip
    assert finished == {0, 1}


def test_chat_logprobs_false_is_the_default_not_an_error(client):
    body = {"messages": [{"role": "user", "content": "hi"}], "logprobs": False, **SMALL}
    assert post(client, body, "/v1/chat/completions").status_code == 200


def test_unknown_paths_and_methods_answer_in_openai_shape(client):
    r = client.get("/v1/nothing-here")
    assert r.status_code == 404 and error(r)["type"] == "not_found_error"
    r = client.get("/v1/completions")
    assert r.status_code == 405 and error(r)["message"] == "Method Not Allowed"


# -- item 9: the front door -----------------------------------------------------


def test_a_body_that_is_not_json_by_content_type_is_415(client):
    r = client.post("/v1/completions", content=json.dumps({"prompt": "a"}),
                    headers={"content-type": "text/plain"})  # fmt: skip
    assert r.status_code == 415 and "'text/plain'" in error(r)["message"]


def test_a_loopback_server_refuses_other_host_names(app_engine):
    server = ServerConfig.for_bind("127.0.0.1", model_name="m")
    assert server.allowed_hosts == ("localhost", "127.0.0.1", "::1")
    app = build_app(app_engine, server)
    with TestClient(app, base_url="http://127.0.0.1:8000") as c:
        assert c.get("/health").status_code == 200
        r = c.get("/v1/models", headers={"host": "attacker.example:8000"})
        assert r.status_code == 400 and "attacker.example" in error(r)["message"]
        assert c.get("/v1/models", headers={"host": "[::1]:8000"}).status_code == 200
    assert ServerConfig.for_bind("0.0.0.0", model_name="m").allowed_hosts is None


@pytest.mark.parametrize(
    ("header", "name"),
    [
        ("localhost:8000", "localhost"),
        ("[::1]:80", "::1"),
        ("::1", "::1"),
        ("a.b", "a.b"),
    ],
)
def test_host_name_drops_the_port(header, name):
    assert host_name(header) == name


def test_the_api_key_comes_from_the_environment(monkeypatch):
    monkeypatch.setenv("MASKKV_API_KEY", "from-env")
    assert ServerConfig.for_bind("127.0.0.1").api_key == "from-env"
    assert ServerConfig.for_bind("127.0.0.1", api_key="flag").api_key == "flag"


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"max_request_bytes": 0}, "max_request_bytes=0 must be a positive integer"),
        ({"api_key": ""}, "api_key must not be empty"),
        ({"model_name": ""}, "model_name='' must be a non-empty str"),
    ],
)
def test_server_config_validation(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ServerConfig(**kwargs)


# -- item 1: a request that cannot fit even alone ---------------------------------


def test_a_request_that_cannot_fit_even_alone_is_a_400(tiny):
    # maskkv B=4 on 2 layers x 4 heads: admitted on an even split (1 page per
    # layer), its heads then need 4 pages per layer, more than the 5-page pool.
    eng = make_engine(tiny, num_pages=6, kv_policy="maskkv", kv_budget=4)
    with TestClient(build_app(eng, ServerConfig(model_name="m"))) as c:
        r = post(c, {"prompt": "a prompt of some length", **SMALL})
        assert r.status_code == 400, r.text
        assert "does not fit in the KV pool even alone" in error(r)["message"]
        assert (
            eng.kv_cache_manager.num_free_pages
            == eng.kv_cache_manager.pool.num_usable_pages
        )


# -- item 5: a non-streaming client that leaves ----------------------------------


def test_a_non_streaming_client_that_disconnects_is_aborted(tiny_dir):
    proc, url = start_server(tiny_dir, "--max-model-len", "600")
    try:
        body = {"prompt": "long " * 3, "max_tokens": 512, "block_length": 8,
                "steps": 512}  # fmt: skip
        headers = {"Authorization": f"Bearer {API_KEY}"}
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(f"{url}/v1/completions", json=body, headers=headers, timeout=1.5)
        m = {}
        for _ in range(100):
            m = metrics(url)
            if m["maskkv_requests_running"] == 0:
                break
            httpx.get(f"{url}/health")
        assert m["maskkv_requests_aborted_total"] == 1
        assert m["maskkv_requests_finished_total"] == 0
        assert m["maskkv_kv_pages_free"] == m["maskkv_kv_pages_total"]
    finally:
        stop_server(proc)


def test_a_prompt_too_long_names_the_prompt(client):
    r = post(client, {"prompt": "x" * 20_000, **SMALL})
    assert r.status_code == 400 and error(r)["param"] == "prompt"
    assert "exceeds max_model_len=600" in error(r)["message"]


# -- issue 25, item 10: the field at fault is the one named ---------------------


@pytest.mark.parametrize(
    ("path", "body", "param", "message"),
    [
        ("/v1/completions", {"max_tokens": 10**8}, "max_tokens",
         "max_tokens=100000000 leaves no room for a prompt within max_model_len=600"),
        ("/v1/chat/completions", {"max_completion_tokens": 600},
         "max_completion_tokens", "max_completion_tokens=600 leaves no room"),
        ("/v1/chat/completions", {"messages": [{"role": "bot", "content": "hi"}]},
         "messages", "chat role 'bot' is not one of"),
        ("/v1/chat/completions", {"messages": [{"role": "user", "content": 5}]},
         "messages", "chat content for role 'user' must be a string"),
        ("/v1/chat/completions", {"messages": [{"role": "user", "content": "x" * 900}]},
         "messages", "exceeds max_model_len=600"),
        ("/v1/completions", {"prompt": ""}, "prompt", "prompt is empty"),
        ("/v1/completions", {"prompt": ["a", ""]}, "prompt", "prompt is empty"),
    ],
)  # fmt: skip
def test_errors_name_the_field_at_fault(client, path, body, param, message):
    # Alone, a length field sets steps and block length too (as a client sends it).
    small = {} if {"max_tokens", "max_completion_tokens"} & set(body) else SMALL
    if path.endswith("chat/completions"):
        body = {"messages": [{"role": "user", "content": "hi"}], **body}
    else:
        body = {"prompt": "hi", **body}
    r = post(client, {**small, **body}, path)
    assert r.status_code == 400, r.text
    assert (error(r)["param"], message in error(r)["message"]) == (param, True), r.text


def test_closing_merged_streams_closes_every_stream():
    # A client that leaves a two-prompt request closes the merged stream; each
    # request's stream must close too (that is what aborts it in the engine).
    import asyncio

    from maskkv_vllm.entrypoints.openai_server import _merged

    closed = []

    async def endless(i):
        try:
            while True:
                yield i
                await asyncio.sleep(0.001)
        finally:
            closed.append(i)

    async def main():
        merged = _merged([endless(0), endless(1)])
        assert (await merged.__anext__())[1] in (0, 1)
        await merged.aclose()

    asyncio.run(main())
    assert sorted(closed) == [0, 1]
