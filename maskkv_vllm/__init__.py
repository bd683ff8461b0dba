"""maskkv-vllm: long-context serving of diffusion LLMs with MaskKV eviction."""

from maskkv_vllm import _moved

__version__ = "0.1.0"

_moved.install()
