"""``MaskKVGPUModelRunner``: LLaDA's denoising steps inside vLLM's V1 CUDA runner.

The denoising logic is ``diffusion_runner.DiffusionRunnerMixin`` (shared with
the CPU runner). The KV pool is read and written only by our attention
(``diffusion_attention``: ``kv.paged_attention``, the Triton kernel on CUDA),
which reinterprets the pool layer's cache memory as head-pages
(``request_pages.VllmPageStore``), so the CUDA backend's cache layout and its
kernel-block splitting do not matter. Built by ``gpu_worker.MaskKVGPUWorker``;
needs the V1 runner, which the plugin's config hook pins on every LLaDA engine
(``engine_config.pin_v1_model_runner``).
"""

from __future__ import annotations

from vllm.v1.worker.gpu_model_runner import GPUModelRunner

from maskkv_vllm.vllm_adapter.worker.diffusion_runner import DiffusionRunnerMixin


class MaskKVGPUModelRunner(DiffusionRunnerMixin, GPUModelRunner):
    """V1 GPU model runner that denoises LLaDA canvases."""
