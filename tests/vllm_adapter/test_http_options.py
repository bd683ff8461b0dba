"""One option table for both servers (issue 25), without a server or vLLM.

``options.check_fields`` is what ``maskkv serve`` runs; ``http_options.vllm_body``
runs it for vLLM's server and moves the diffusion options into ``vllm_xargs``;
``OptionsMiddleware`` does that on the raw ASGI body. Default suite.
"""

from __future__ import annotations

import asyncio
import json

import pytest

from maskkv_vllm.openai_api.options import APIError, check_fields
from maskkv_vllm.openai_api.protocol import sampling_params
from maskkv_vllm.vllm_adapter.entrypoints.http_options import (
    OptionsMiddleware,
    vllm_body,
)
from maskkv_vllm.vllm_adapter.params import request_only_params


@pytest.mark.parametrize(
    ("field", "value"),
    [("ignore_eos", True), ("prompt_logprobs", 1), ("use_beam_search", True),
     ("skip_special_tokens", False), ("bad_words", ["x"])],
)  # fmt: skip
def test_the_embedded_server_refuses_vllm_s_sampling_extensions(field, value):
    # vLLM's server reads these; the embedded one used to ignore them silently.
    with pytest.raises(APIError, match=f"{field}=") as err:
        sampling_params({"prompt": "x", field: value})
    assert err.value.param == field
    check_fields({field: None})  # null asks for nothing


def test_vllm_body_moves_diffusion_options_into_vllm_xargs():
    body = {"prompt": "x", "gen_length": 16, "max_completion_tokens": 8,
            "block_length": 8, "kv_policy": "snapkv", "kv_budget": 16,
            "temperature": 0.5, "seed": 3, "logits_eos_inf": True,
            "user": "u"}  # fmt: skip
    out = vllm_body(body)
    assert out == {
        "prompt": "x", "max_tokens": 16, "temperature": 0.5, "seed": 3, "user": "u",
        "vllm_xargs": {"maskkv_block_length": 8, "maskkv_kv_policy": "snapkv",
                       "maskkv_kv_budget": 16, "maskkv_temperature": 0.5,
                       "maskkv_seed": 3, "maskkv_logits_eos_inf": True},
    }  # fmt: skip
    # What the runner makes of it (pydantic turns the boolean into 1 on the way)
    xargs = {**out["vllm_xargs"], "maskkv_logits_eos_inf": 1}
    params = request_only_params(xargs, out["max_tokens"])
    assert (params.gen_length, params.block_length, params.kv_budget) == (16, 8, 16)
    assert (params.temperature, params.seed, params.logits_eos_inf) == (0.5, 3, True)


def test_top_p_top_k_and_alg_temp_reach_both_engines():
    # Dream's filters (issue 29): honoured by both servers, no longer refused.
    body = {"prompt": "x", "max_tokens": 8, "top_p": 0.9, "top_k": 5,
            "alg_temp": 0.5, "remasking": "origin"}  # fmt: skip
    embedded = sampling_params(body)
    out = vllm_body(body)
    params = request_only_params(out["vllm_xargs"], out["max_tokens"])
    for got in (embedded, params):
        assert (got.top_p, got.top_k, got.alg_temp) == (0.9, 5, 0.5)
        assert got.remasking == "origin"
    for field, value in [("top_p", 0), ("top_k", -3), ("alg_temp", -1)]:
        with pytest.raises(APIError, match=f"{field}={value}") as err:
            sampling_params({"prompt": "x", field: value})
        assert err.value.param == field


def test_vllm_body_defaults_the_length_as_the_embedded_server_does():
    assert vllm_body({"prompt": "x"})["max_tokens"] == 128
    assert "vllm_xargs" not in vllm_body({"prompt": "x"})
    assert vllm_body({"prompt": "x", "max_tokens": 8}) == {
        "prompt": "x",
        "max_tokens": 8,
    }


@pytest.mark.parametrize(
    ("body", "param", "message"),
    [
        ({"n": 2}, "n", "n=2 is not supported"),
        ({"logprobs": True, "top_logprobs": 2}, "logprobs", "logprobs=True is not"),
        ({"kv_budget": 0}, "kv_budget", "kv_budget=0 must be a positive integer"),
        ({"temperature": -1}, "temperature", "temperature=-1"),
        ({"kv_budget": 4, "vllm_xargs": {"maskkv_kv_budget": 8}}, "kv_budget",
         "kv_budget=4 but vllm_xargs has maskkv_kv_budget=8"),
        # with maskkv_* xargs the front-end validator checks the diffusion values,
        # but the option table still applies
        ({"min_p": 0.5, "vllm_xargs": {"maskkv_steps": 8}}, "min_p", "min_p=0.5"),
    ],
)  # fmt: skip
def test_vllm_body_refuses_as_the_embedded_server_does(body, param, message):
    with pytest.raises(APIError, match=message) as err:
        vllm_body({"prompt": "x", "max_tokens": 16, **body})
    assert (err.value.status, err.value.param) == (400, param)


def _call(middleware, path, body: bytes):
    """Run one POST through ``middleware``; (status, body the app got or sent)."""
    seen, sent = {}, []
    chunks = [body[:5], body[5:]]

    async def receive():
        chunk = chunks.pop(0)
        return {"type": "http.request", "body": chunk, "more_body": bool(chunks)}

    async def app(scope, receive, send):
        seen["body"], more = b"", True
        while more:
            message = await receive()
            seen["body"] += message["body"]
            more = message["more_body"]
        seen["length"] = dict(scope["headers"])[b"content-length"]

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "method": "POST", "path": path,
             "headers": [(b"content-length", str(len(body)).encode())]}  # fmt: skip
    asyncio.run(OptionsMiddleware(app, middleware)(scope, receive, send))
    if sent:
        return sent[0]["status"], json.loads(sent[1]["body"])
    assert int(seen["length"]) == len(seen["body"])
    return 200, seen["body"]


class _Gate:
    active = True


def test_the_middleware_rewrites_refuses_and_passes_through():
    good = json.dumps({"prompt": "x", "max_tokens": 8, "kv_budget": 4}).encode()
    status, body = _call(_Gate, "/v1/completions", good)
    assert json.loads(body)["vllm_xargs"] == {"maskkv_kv_budget": 4}
    status, body = _call(_Gate, "/v1/chat/completions", b'{"n": 2}')
    assert status == 400 and body["error"]["param"] == "n"
    assert body["error"]["message"] == "n=2 is not supported"
    # not JSON, another route, or a gate that is off (another model): untouched
    assert _call(_Gate, "/v1/completions", b"not json") == (200, b"not json")
    assert _call(_Gate, "/v1/embeddings", b'{"n": 2}') == (200, b'{"n": 2}')
    _Gate.active = False
    try:
        assert _call(_Gate, "/v1/completions", b'{"n": 2}') == (200, b'{"n": 2}')
    finally:
        _Gate.active = True


@pytest.mark.vllm
def test_the_validator_refuses_what_vllm_never_defaults():
    # The offline LLM and a server without the endpoint plugin (issue 25).
    vllm = pytest.importorskip("vllm")
    from vllm.exceptions import VLLMValidationError

    from maskkv_vllm.vllm_adapter.entrypoints.validation import check_request

    for kwargs, param in [({"n": 2}, "n"), ({"logprobs": 2}, "logprobs"),
                          ({"stop": ["x"]}, "stop")]:  # fmt: skip
        with pytest.raises(VLLMValidationError, match=f"{param}=") as err:
            check_request(vllm.SamplingParams(max_tokens=16, **kwargs))
        assert err.value.parameter == param
    check_request(vllm.SamplingParams(max_tokens=16, temperature=1.0, top_p=0.9))
