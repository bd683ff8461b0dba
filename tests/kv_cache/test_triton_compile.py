"""The Triton kernel compiled on the CPU for each target GPU: no register spills and
shared memory within the target's per-block limit, at the configs the runtime uses."""

from __future__ import annotations

import os

import pytest
import torch

pytest.importorskip("triton")

from maskkv_vllm.kv_cache import triton_paged_attention as tpa  # noqa: E402
from maskkv_vllm.kv_cache.triton_compile_check import compile_report  # noqa: E402

pytestmark = pytest.mark.skipif(
    os.environ.get("TRITON_INTERPRET") == "1",
    reason="under TRITON_INTERPRET=1 there is no kernel to compile",
)

A100, L40S, H100 = (8, 0), (8, 9), (9, 0)
FP32, BF16, FP16 = torch.float32, torch.bfloat16, torch.float16


def assert_clean(dtype, capability, head_dim):
    row = compile_report(dtype, capability, head_dim)
    # The report compiled the runtime's own choice, not a copy of its numbers.
    config = tpa.launch_config(dtype, capability, head_dim)
    assert {k: row[k] for k in vars(config)} == vars(config)
    assert row["spill_bytes"] == 0, row
    assert row["shared"] <= tpa.MAX_SHARED_PER_BLOCK[capability], row


@pytest.mark.parametrize("dtype", [FP32, BF16, FP16])
@pytest.mark.parametrize("capability", [A100, L40S, H100])
def test_llada_head_dim_compiles_clean(capability, dtype):
    # At the old fixed config (32, 64, 4 warps, 3 stages) all nine spilled 4.9-7.5 KB
    # per thread and asked for 144-152 KiB of shared memory, over L40S's 99 KB.
    assert_clean(dtype, capability, 128)


@pytest.mark.slow
@pytest.mark.parametrize("dtype", [FP32, BF16, FP16])
@pytest.mark.parametrize("capability", [A100, (8, 6), (8, 7), L40S, H100])
@pytest.mark.parametrize("head_dim", [24, 32, 64, 128, 256])
def test_every_target_dtype_and_head_dim_compiles_clean(head_dim, capability, dtype):
    assert_clean(dtype, capability, head_dim)


class RecordingKernel:
    """Stands in for the JIT kernel: records the launch instead of running it."""

    def __getitem__(self, grid):
        def launch(*args, **meta):
            self.grid, self.args, self.meta = grid, args, meta

        return launch


def test_runtime_launches_with_launch_config(monkeypatch):
    kernel = RecordingKernel()
    monkeypatch.setattr(tpa, "_paged_attention_kernel", kernel)
    monkeypatch.setattr(tpa, "device_capability", lambda device: L40S)
    b, h, lq, d, page = 1, 4, 40, 128, 16
    q = torch.zeros(b, h, lq, d, dtype=BF16)
    cache = torch.zeros(8, page, d, dtype=BF16)
    tables = torch.zeros(b, h, 8, dtype=torch.int32)
    lens = torch.zeros(b, h, dtype=torch.int32)
    mask = torch.ones(b, lq, dtype=torch.bool)
    tpa.paged_attention_triton(q, q, q, mask, cache, cache, tables, lens)
    config = tpa.launch_config(BF16, L40S, d)
    assert kernel.meta["BLOCK_M"] == config.block_m
    assert kernel.meta["BLOCK_N"] == config.block_n
    assert kernel.meta["num_warps"] == config.num_warps
    assert kernel.meta["num_stages"] == config.num_stages
    assert kernel.grid == (b * h, -(-lq // config.block_m))


def test_launch_config_covers_every_listed_target():
    for capability in tpa.MAX_SHARED_PER_BLOCK:
        for dtype in (FP32, BF16, FP16):
            for head_dim in (24, 32, 64, 128):
                tpa.launch_config(dtype, capability, head_dim)


def test_same_limit_targets_share_configs_and_unknown_ones_fall_back():
    # A10 / RTX 3090 (8.6) have L40S's 99 KB and compile alike.
    assert tpa.launch_config(FP32, (8, 6), 128) == tpa.launch_config(FP32, L40S, 128)
    # Other targets and the interpreter (None) get the 99 KB target's configs.
    for capability in [(8, 7), (12, 0), None]:
        assert tpa.launch_config(BF16, capability, 128) == tpa.launch_config(
            BF16, L40S, 128
        )


def test_launch_config_rejects_other_dtypes():
    with pytest.raises(TypeError, match="float64"):
        tpa.launch_config(torch.float64, H100, 128)
