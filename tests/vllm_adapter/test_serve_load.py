"""``maskkv vllm-serve`` under load, with cancels and refused options (issue 25).

The vLLM twin of ``tests/engine/test_server.py::test_load_with_cancels_loses_nothing``:
many concurrent long requests on the shared ``llada_server`` (snapkv B = 4 by
default), some streamed, some cancelled at a random point (a stream closed after a
random number of blocks, a client that stops waiting after a random delay), and
requests with options the engine cannot honour mixed in. Every good request that
finishes is answered with its solo tokens (the embedded engine's, one request at a
time), every bad one is a 4xx, the server stays healthy and vLLM's KV usage goes
back to 0.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
import urllib.request
from pathlib import Path

import pytest

pytest.importorskip("vllm")
httpx = pytest.importorskip("httpx")

from maskkv_vllm.engine.llm import LLM as EmbeddedLLM  # noqa: E402
from maskkv_vllm.sampling_params import SamplingParams  # noqa: E402

pytestmark = pytest.mark.vllm

NUM_REQUESTS, CONCURRENCY, MAX_TOKENS = 64, 16, 128
NUM_SHAPES = 8
"""Distinct prompt + policy pairs (each answered solo once; repeats meet vLLM's
prefix cache)."""
GEN = {"block_length": 32, "steps": 128}  # 4 blocks, one token a step
POLICIES = [{"kv_policy": "full"}, {}, {"kv_policy": "maskkv", "kv_budget": 6}]
BAD = [
    ({"n": 2}, "n"),
    ({"min_p": 0.5}, "min_p"),
    ({"stop": ["x"]}, "stop"),
    ({"logprobs": 2}, "logprobs"),
    ({"temperature": "hot"}, "temperature"),
    ({"kv_budget": 0, "kv_policy": "snapkv"}, "kv_budget"),
    ({"block_length": 5}, "max_tokens"),
    ({"presence_penalty": 1.0}, "presence_penalty"),
]


def _plan(i: int, rng: random.Random) -> dict:
    """Request i: its body, and what the client does (stream, cancel, bad)."""
    shape = i % NUM_SHAPES  # its prompt and policy
    body = {
        "model": "tiny", "prompt": f"load {shape} " + "lorem ipsum " * shape,
        "max_tokens": MAX_TOKENS, "return_token_ids": True, **GEN,
        **POLICIES[shape % 3],
    }  # fmt: skip
    plan = {"i": i, "shape": shape, "stream": i % 3 == 1, "cancel": None, "bad": None}
    if i % 6 == 5:
        extra, param = BAD[(i // 6) % len(BAD)]
        body.update(extra)
        plan["bad"] = param
    elif i % 4 == 0:  # after this many blocks, or seconds
        plan["cancel"] = rng.randint(1, 3) if plan["stream"] else rng.uniform(0.1, 2)
    plan["body"] = body
    return plan


async def _run(c: httpx.AsyncClient, sem: asyncio.Semaphore, plan: dict):
    body, cancel = plan["body"], plan["cancel"]
    async with sem:
        if plan["stream"]:
            ids = []
            async with c.stream(
                "POST", "/v1/completions", json={**body, "stream": True}
            ) as r:
                if r.status_code != 200:
                    return r.status_code, json.loads(await r.aread())
                blocks = 0
                async for line in r.aiter_lines():
                    if line.startswith("data: {"):
                        new = json.loads(line[6:])["choices"][0]["token_ids"] or []
                        ids, blocks = ids + new, blocks + bool(new)
                        if blocks == cancel:
                            return "cancelled", None  # closes the stream
            return 200, ids
        try:
            r = await c.post("/v1/completions", json=body, timeout=cancel or 300)
        except httpx.TimeoutException:
            return "cancelled", None
        out = r.json()
        return r.status_code, out["choices"][0]["token_ids"] if r.is_success else out


def _solo(vllm_tiny_dir, plans) -> dict[int, list[int]]:
    """The embedded engine's tokens for every good request, one at a time."""
    ref = EmbeddedLLM(str(vllm_tiny_dir), kv_policy="full", dtype="float32")
    want = {}
    for plan in plans:
        body = plan["body"]
        if plan["shape"] in want:
            continue
        policy = body.get("kv_policy", "snapkv")  # the server's default, B = 4
        budget = body.get("kv_budget", 4)
        params = SamplingParams(MAX_TOKENS, kv_policy=policy, kv_budget=budget, **GEN)
        (out,) = ref.generate([body["prompt"]], params, use_tqdm=False)
        want[plan["shape"]] = out.token_ids
    return want


def _metric(url: str, name: str) -> list[float]:
    with urllib.request.urlopen(f"{url}/metrics", timeout=5) as r:
        text = r.read().decode()
    return [
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith(name + "{") or line.startswith(name + " ")
    ]


def _wait_idle(url: str, timeout: float = 60) -> None:
    names = ("vllm:num_requests_running", "vllm:num_requests_waiting",
             "vllm:kv_cache_usage_perc")  # fmt: skip
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        values = {n: _metric(url, n) for n in names}
        if all(v and not any(v) for v in values.values()):
            return
        time.sleep(0.5)
    raise AssertionError(f"server not idle after {timeout} s: {values}")


def test_load_with_cancels_and_refused_options(llada_server, vllm_tiny_dir):
    rng = random.Random(25)
    plans = [_plan(i, rng) for i in range(NUM_REQUESTS)]
    t0 = time.monotonic()
    want = _solo(vllm_tiny_dir, [p for p in plans if p["bad"] is None])
    config = json.loads((Path(vllm_tiny_dir) / "config.json").read_text())
    stops = {config["eos_token_id"]}
    print(f"solo answers in {time.monotonic() - t0:.1f} s")

    async def main():
        sem = asyncio.Semaphore(CONCURRENCY)
        async with httpx.AsyncClient(base_url=llada_server.url, timeout=300) as c:
            return await asyncio.gather(*(_run(c, sem, p) for p in plans))

    t0 = time.monotonic()
    results = asyncio.run(main())
    print(f"{NUM_REQUESTS} requests in {time.monotonic() - t0:.1f} s")
    for plan, (status, got) in zip(plans, results, strict=True):
        if plan["bad"] is not None:
            assert status == 400, (plan, status, got)
            assert got["error"]["param"] == plan["bad"], (plan, got)
        elif status != "cancelled":
            assert status == 200, (plan, status, got)
            # The embedded engine cuts its answer before the first stop id; vLLM
            # returns the stop id and the canvas after it (docs/vllm_notes.md §14).
            solo = want[plan["shape"]]
            assert got[: len(solo)] == solo, plan
            assert len(got) == len(solo) or got[len(solo)] in stops, plan
    cancelled = sum(r[0] == "cancelled" for r in results)
    print(f"{cancelled} cancelled")
    assert cancelled >= 8
    assert llada_server.healthy()
    _wait_idle(llada_server.url)
