"""The embedded engine's model runner: executes the steps the scheduler hands it.

As vLLM's ``v1/worker/``: ``model_runner.ModelRunner`` runs the batched
forwards over the engine's prompt cache and policies and applies each step's
sampling (``maskkv_vllm.sampler``). It also runs prompts standalone
(``ModelRunner.generate``), with a cache and policies of its own.
"""
