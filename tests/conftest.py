"""Shared fixtures: tiny real checkpoints written to disk, and the hardware marks."""

from __future__ import annotations

import pytest
import torch

from maskkv_vllm.evaluation.synthetic import word_tokenizer
from maskkv_vllm.models.loader import load_checkpoint
from maskkv_vllm.models.tiny import write_tiny_checkpoint


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords or "multi_gpu" in item.keywords:
            item.add_marker(skip)


def _peak_bytes(fn) -> int:
    """Peak of live bytes allocated inside ``fn()`` on the CPU.

    torch's profiler (``profile_memory``) records each op's own allocations
    and every free; replayed in time order, their running sum peaks here.
    """
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    deltas = []
    for e in prof.events():
        d = e.cpu_memory_usage if e.name == "[memory]" else e.self_cpu_memory_usage
        if d:
            deltas.append((e.time_range.start, d))
    live = peak = 0
    for _, d in sorted(deltas):
        live += d
        peak = max(peak, live)
    return peak


@pytest.fixture(scope="session")
def peak_bytes():
    """``peak_bytes(fn) -> int``: peak CPU bytes allocated while ``fn()`` runs."""
    return _peak_bytes


@pytest.fixture(scope="session")
def tok():
    """The synthetic tasks' word tokenizer (what ``train_model`` trains with)."""
    return word_tokenizer()


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
