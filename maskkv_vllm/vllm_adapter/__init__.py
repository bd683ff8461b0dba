"""vLLM integration: the only subpackage that imports vLLM.

Importing this package imports nothing heavy. ``plugin.register`` (the
``vllm.general_plugins`` entry point) registers LLaDA's config class with
transformers and its architecture with vLLM's ``ModelRegistry``.

Grouped by the process each part runs in, as vLLM itself is:

- here, what both sides share: ``plugin``, ``hf_config`` (LLaDA's config for
  transformers), ``engine_config`` (LLaDA configures its own engine), ``params``
  (engine and per-request MaskKV settings), ``kv_spec`` (the pool as head-pages),
  ``request_pages``, ``diffusion_state``, ``version`` (the pinned vLLM, which wheel),
  ``qualnames`` (classes vLLM loads by name);
- ``core/``, the engine core: ``scheduler.MaskKVDiffusionScheduler`` keeps a
  request on its canvas and frees evicted blocks, ``footprint`` counts them,
  ``metrics`` reports eviction on vLLM's ``/metrics``;
- ``worker/``, the workers: ``cpu_worker.MaskKVCPUWorker`` /
  ``gpu_worker.MaskKVGPUWorker`` with ``cpu_model_runner`` / ``gpu_model_runner``
  (one ``diffusion_runner.DiffusionRunnerMixin``), ``diffusion_attention``,
  ``model`` (LLaDA on vLLM's parallel layers), ``selection`` (which worker a
  platform runs);
- ``entrypoints/``, the front ends: ``api.make_llm``/``api.generate`` offline,
  ``serve.main`` for the OpenAI server, ``validation.MaskKVParamsValidator``
  (per-request params checked in the front end: HTTP 400).
"""
