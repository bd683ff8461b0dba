"""Start a local Ray cluster, deploy two engine replicas, send traffic, show routing.

python examples/ray_replicas.py            # the built-in tiny model on the CPU
"""

from __future__ import annotations

import collections
import socket
from concurrent.futures import ThreadPoolExecutor

import openai
import ray
from ray import serve

from maskkv_vllm.config import CacheConfig, EngineConfig
from maskkv_vllm.distributed.ray_serve import RayServeConfig, build_deployment


def main() -> None:
    ray.init(include_dashboard=False)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    engine = EngineConfig(
        model="tiny", cache=CacheConfig("paged", kv_cache_memory="64MiB")
    )
    cfg = RayServeConfig(num_replicas=2, model_name="tiny")
    serve.run(build_deployment(engine, cfg), name="maskkv", route_prefix="/")
    client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="none")

    def ask(i: int) -> str:
        raw = client.completions.with_raw_response.create(
            model="tiny", prompt=f"hello {i}", max_tokens=16,
            extra_body={"kv_policy": "maskkv", "kv_budget": 8},
        )  # fmt: skip
        return raw.headers["x-maskkv-replica"]

    with ThreadPoolExecutor(8) as pool:
        counts = collections.Counter(pool.map(ask, range(40)))
    for replica, n in counts.items():
        print(f"replica {replica}: {n} requests")
    serve.shutdown()
    ray.shutdown()


if __name__ == "__main__":
    main()
