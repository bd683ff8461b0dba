"""The worker side (vLLM's ``v1/worker``): CPU and CUDA workers, their model runners
(one ``DiffusionRunnerMixin``), the step's attention, LLaDA as a vLLM model, and which
worker a platform runs (``selection``).
"""
