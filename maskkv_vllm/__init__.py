"""maskkv-vllm: long-context serving of diffusion LLMs with MaskKV eviction."""

__version__ = "0.1.1"
