"""``MaskKVCPUWorker``: vLLM's CPU worker with our denoising model runner.

Selected with ``--worker-cls`` (``LLM(worker_cls=...)``)
``maskkv_vllm.vllm_adapter.worker.cpu_worker.MaskKVCPUWorker``; ``api.make_llm`` and
``serve.main`` set it on the CPU platform (``selection.worker_cls_for``).
"""

from __future__ import annotations

from typing import Any

import torch
from vllm.v1.worker.cpu_worker import CPUWorker

from maskkv_vllm.vllm_adapter.version import require_vllm_version
from maskkv_vllm.vllm_adapter.worker.selection import (
    CPU_WORKER_CLS,
    refuse_model_runner_v2,
)

WORKER_CLS = CPU_WORKER_CLS
"""The qualified name vLLM's ``worker_cls`` takes (CUDA: ``gpu_worker.py``)."""


class MaskKVCPUWorker(CPUWorker):
    """``CPUWorker`` whose ``model_runner`` is a ``MaskKVCPUModelRunner``."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        require_vllm_version(type(self).__name__)
        super().__init__(*args, **kwargs)
        refuse_model_runner_v2(self)

    def init_device(self) -> None:
        """vLLM's device setup, then our runner in place of ``CPUModelRunner``.

        ``CPUWorker.init_device`` builds the stock runner itself (no factory
        hook); it holds only host buffers at this point, so it is replaced.
        """
        from maskkv_vllm.vllm_adapter.worker.cpu_model_runner import (
            MaskKVCPUModelRunner,
        )

        super().init_device()
        self.model_runner = MaskKVCPUModelRunner(self.vllm_config, torch.device("cpu"))
