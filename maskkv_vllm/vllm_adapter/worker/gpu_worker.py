"""``MaskKVGPUWorker``: vLLM's CUDA worker with our denoising model runner.

Selected with ``--worker-cls`` (``LLM(worker_cls=...)``)
``maskkv_vllm.vllm_adapter.worker.gpu_worker.MaskKVGPUWorker``; ``api.make_llm`` and
``serve.main`` pick it on CUDA (``selection.worker_cls_for``). vLLM's ``Worker``
builds its runner in ``_make_model_runner``, which is documented as the override
point. The V1 runner is chosen by the plugin's config hook
(``engine_config.pin_v1_model_runner``).
"""

from __future__ import annotations

from typing import Any

from vllm.v1.worker.gpu_worker import Worker

from maskkv_vllm.vllm_adapter.version import require_vllm_version
from maskkv_vllm.vllm_adapter.worker.selection import refuse_model_runner_v2


class MaskKVGPUWorker(Worker):
    """``Worker`` whose ``model_runner`` is a ``MaskKVGPUModelRunner``.

    Raises:
        RuntimeError: the engine runs Model Runner V2, which only an explicit
            ``VLLM_USE_V2_MODEL_RUNNER=1`` selects for LLaDA (the config hook
            pins V1); our runner subclasses V1's.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        require_vllm_version(type(self).__name__)
        super().__init__(*args, **kwargs)
        refuse_model_runner_v2(self)

    def _make_model_runner(self) -> Any:
        from maskkv_vllm.vllm_adapter.worker.gpu_model_runner import (
            MaskKVGPUModelRunner,
        )

        return MaskKVGPUModelRunner(self.vllm_config, self.device)
