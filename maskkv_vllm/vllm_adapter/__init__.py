"""vLLM integration: the only subpackage that imports vLLM.

Importing this package imports nothing heavy. ``plugin.register`` (the
``vllm.general_plugins`` entry point) registers LLaDA's config class with
transformers and its architecture with vLLM's ``ModelRegistry``; ``hf_config``
and ``model`` hold the classes it registers, each imported only when used.

Phase 2 (LLaDA's denoising loop and MaskKV block freeing inside vLLM's engine):
``scheduler.MaskKVDiffusionScheduler`` and, by platform (``workers.py``),
``worker.MaskKVCPUWorker`` (runner ``runner.MaskKVCPUModelRunner``) or
``gpu_worker.MaskKVGPUWorker`` (runner ``gpu_runner.MaskKVGPUModelRunner``),
both runners sharing ``diffusion_runner.DiffusionRunnerMixin``; selected by
``scheduler_cls`` / ``worker_cls``; ``validation.MaskKVParamsValidator`` checks
per-request params in the front end (HTTP 400);
``api.make_llm``/``api.generate`` for offline use and
``serve.main`` for the OpenAI server set them.
"""
