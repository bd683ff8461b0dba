"""``MaskKVCPUModelRunner``: LLaDA's denoising steps inside vLLM's V1 CPU runner.

The denoising logic is ``diffusion_runner.DiffusionRunnerMixin`` (shared with
the CUDA runner in ``gpu_runner.py``); this runner adds the CPU backend's
packed KV layout, probed once with the backend's own write op
(``kv_layout.CacheLayout``).
"""

from __future__ import annotations

from torch import nn
from vllm.v1.worker.cpu_model_runner import CPUModelRunner

from maskkv_vllm.vllm_adapter.diffusion_runner import (
    DiffusionRunnerMixin,
    MaskKVRunnerOutput,
)
from maskkv_vllm.vllm_adapter.kv_layout import CacheLayout

__all__ = ["MaskKVCPUModelRunner", "MaskKVRunnerOutput"]


class MaskKVCPUModelRunner(DiffusionRunnerMixin, CPUModelRunner):
    """V1 CPU model runner that denoises LLaDA canvases."""

    def make_cache_layout(self, attn_layer: nn.Module) -> CacheLayout:
        return CacheLayout.probe(attn_layer)
