"""``MaskKVGPUModelRunner``: LLaDA's denoising steps inside vLLM's V1 CUDA runner.

The denoising logic is ``diffusion_runner.DiffusionRunnerMixin`` (shared with
the CPU runner); this runner adds the CUDA backends' unpacked KV layout
(``kv_layout.PagedCacheLayout``: ``(num_blocks, Hkv, block_size, 2 * d)``,
keys first) and maps the scheduler's block ids onto kernel blocks when vLLM
splits a block into several kernel blocks. Built by
``gpu_worker.MaskKVGPUWorker``; needs the V1 runner (``VLLM_USE_V2_MODEL_RUNNER=0``,
which ``api.make_llm`` and ``serve.main`` set on CUDA).
"""

from __future__ import annotations

import torch
from torch import nn
from vllm.v1.worker.gpu_model_runner import GPUModelRunner

from maskkv_vllm.vllm_adapter.diffusion_runner import DiffusionRunnerMixin
from maskkv_vllm.vllm_adapter.kv_layout import PagedCacheLayout


class MaskKVGPUModelRunner(DiffusionRunnerMixin, GPUModelRunner):
    """V1 GPU model runner that denoises LLaDA canvases."""

    def make_cache_layout(self, attn_layer: nn.Module) -> PagedCacheLayout:
        head_dim = self.vllm_config.model_config.get_head_size()
        block_size = self.vllm_config.cache_config.block_size
        return PagedCacheLayout.for_cache(attn_layer.kv_cache, head_dim, block_size)

    def map_block_ids(self, block_ids: torch.Tensor) -> torch.Tensor:
        return self._layout.kernel_block_ids(block_ids)
