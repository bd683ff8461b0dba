"""The worker side (vLLM's ``v1/worker``): CPU and CUDA workers, their model runners
(one ``DiffusionRunnerMixin``), the step's attention, LLaDA as a vLLM model, and which
worker a platform runs (``selection``).

``maskkv_vllm.vllm_adapter.worker`` was the CPU worker's module before it became this
package; its names still resolve here, with a warning, until 0.3.
"""

from __future__ import annotations

import importlib

_OLD_NAMES = ("MaskKVCPUWorker",)


def __getattr__(name: str):
    if name in _OLD_NAMES:
        from maskkv_vllm import _moved

        new = "maskkv_vllm.vllm_adapter.worker.cpu_worker"
        _moved.warn(f"maskkv_vllm.vllm_adapter.worker.{name}", f"{new}.{name}")
        return getattr(importlib.import_module(new), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
