"""Shared fixtures: tiny real checkpoints written to disk, and the hardware marks."""

from __future__ import annotations

import pytest
import torch

from maskkv_vllm.models.loader import load_checkpoint
from maskkv_vllm.models.tiny import write_tiny_checkpoint


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords or "multi_gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory):
    """2 layers, 4 heads of 32, byte vocabulary (262), seed 0."""
    return write_tiny_checkpoint(tmp_path_factory.mktemp("tiny"), seed=0)


@pytest.fixture(scope="session")
def gqa_dir(tmp_path_factory):
    """Grouped-query variant: 4 query heads over 2 KV heads."""
    return write_tiny_checkpoint(tmp_path_factory.mktemp("gqa"), seed=1, n_kv_heads=2)


@pytest.fixture(scope="session")
def tiny(tiny_dir):
    """(model, tokenizer) of ``tiny_dir``, fp32 on the CPU."""
    return load_checkpoint(tiny_dir)


@pytest.fixture(scope="session")
def gqa(gqa_dir):
    return load_checkpoint(gqa_dir)
