"""Two embedded-engine replicas behind Ray Serve on a local CPU Ray instance."""

from __future__ import annotations

import socket
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

ray = pytest.importorskip("ray")
openai = pytest.importorskip("openai")

from ray import serve  # noqa: E402

from maskkv_vllm.config import CacheConfig, EngineConfig  # noqa: E402
from maskkv_vllm.distributed.ray_serve import (  # noqa: E402
    RayServeConfig,
    build_deployment,
)

pytestmark = pytest.mark.ray
API_KEY = "ray-key"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def endpoint(tiny_dir):
    ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False)
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    engine = EngineConfig(
        model=str(tiny_dir), cache=CacheConfig("paged", kv_cache_memory="32MiB")
    )
    cfg = RayServeConfig(num_replicas=2, api_key=API_KEY, model_name="tiny-llada")
    serve.run(build_deployment(engine, cfg), name="maskkv", route_prefix="/")
    yield f"http://127.0.0.1:{port}/v1"
    serve.shutdown()
    ray.shutdown()


def ask(client, i):
    raw = client.completions.with_raw_response.create(
        model="tiny-llada", prompt=f"request {i} " + "x " * (i % 17), max_tokens=8,
        extra_body={"block_length": 8, "steps": 8,
                    "kv_policy": "maskkv" if i % 2 else "full", "kv_budget": 4},
    )  # fmt: skip
    res = raw.parse()
    assert res.choices[0].finish_reason in ("stop", "length")
    return raw.headers["x-maskkv-replica"]


def test_fifty_requests_spread_over_both_replicas(endpoint):
    client = openai.OpenAI(base_url=endpoint, api_key=API_KEY, max_retries=0)
    with ThreadPoolExecutor(8) as pool:
        replicas = list(pool.map(lambda i: ask(client, i), range(50)))
    assert len(replicas) == 50
    assert len(set(replicas)) == 2


def test_killing_one_replica_leaves_the_other_serving(endpoint):
    client = openai.OpenAI(base_url=endpoint, api_key=API_KEY, max_retries=3)
    actors = [
        a for a in ray.util.list_named_actors(all_namespaces=True)
        if "SERVE_REPLICA" in a["name"]
    ]  # fmt: skip
    assert len(actors) == 2
    victim = ray.get_actor(actors[0]["name"], namespace=actors[0]["namespace"])
    with ThreadPoolExecutor(4) as pool:
        before = [pool.submit(ask, client, i) for i in range(10)]
        time.sleep(0.2)
        ray.kill(victim, no_restart=True)
        after = [pool.submit(ask, client, 100 + i) for i in range(20)]
        answered = [f.result() for f in after]
        survived = [f for f in before if f.exception() is None]
    assert len(answered) == 20  # every request after the kill got its answer
    assert len(survived) >= 1
