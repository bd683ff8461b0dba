"""Round trip through vLLM's packed CPU KV cache layout (one in-process worker)."""

from __future__ import annotations

import pytest

pytest.importorskip("vllm")

from maskkv_vllm.vllm_adapter.plugin import register  # noqa: E402

pytestmark = pytest.mark.vllm


def _round_trip(worker):
    import torch

    from maskkv_vllm.vllm_adapter.kv_layout import CacheLayout, write_slots

    layer = worker.model_runner.get_model().blocks[1].attn
    layout = CacheLayout.probe(layer)
    _, heads, bs, two_d = layer.kv_cache.shape
    gen = torch.Generator().manual_seed(0)
    k = torch.randn(70, heads, two_d // 2, generator=gen)
    v = torch.randn(70, heads, two_d // 2, generator=gen)
    blocks = torch.tensor([5, 2, 9])  # a request's blocks, out of order
    write_slots(layer, k, v, blocks, torch.arange(70))
    rk, rv = layout.read(layer.kv_cache, blocks, 70)  # (H, 70, d)
    # (On this box's ISA a row-major read of slot 0 is not k[0, 0]: the
    # layout is packed, which is why reads go through the probed permutation.)
    return torch.equal(rk, k.transpose(0, 1)), torch.equal(rv, v.transpose(0, 1))


def test_write_then_read_round_trips(vllm_tiny_dir):
    from vllm import LLM

    register()
    llm = LLM(
        model=str(vllm_tiny_dir), dtype="float32", enforce_eager=True,
        max_model_len=256, block_size=32, num_gpu_blocks_override=16, seed=0,
    )  # fmt: skip
    assert llm.collective_rpc(_round_trip) == [(True, True)]
