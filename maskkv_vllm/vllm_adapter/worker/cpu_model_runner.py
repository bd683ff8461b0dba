"""``MaskKVCPUModelRunner``: LLaDA's denoising steps inside vLLM's V1 CPU runner.

The denoising logic is ``diffusion_runner.DiffusionRunnerMixin`` (shared with
the CUDA runner in ``gpu_model_runner.py``); the KV pool is read and written only by
our attention, so nothing here depends on the CPU backend's cache layout.
"""

from __future__ import annotations

from vllm.v1.worker.cpu_model_runner import CPUModelRunner

from maskkv_vllm.vllm_adapter.worker.diffusion_runner import (
    DiffusionRunnerMixin,
    MaskKVRunnerOutput,
)

__all__ = ["MaskKVCPUModelRunner", "MaskKVRunnerOutput"]


class MaskKVCPUModelRunner(DiffusionRunnerMixin, CPUModelRunner):
    """V1 CPU model runner that denoises LLaDA canvases."""
