"""Shared pieces of the CUDA tests: the vLLM environment and teardown, the plugin
entry point other processes need, and checkpoints drawn on the GPU.

Nothing here imports vLLM at module level: without CUDA every test in this
directory is collected and skipped (``tests/conftest.py``).
"""

from __future__ import annotations

import gc
import importlib.util
import sys
from importlib import metadata
from pathlib import Path

import pytest
import torch

GPU_CHECK = Path(__file__).resolve().parents[2] / "scripts" / "gpu_check.py"


@pytest.fixture(scope="module")
def vllm_gpu_env(tmp_path_factory):
    """Offline, in-process engine core on CUDA. ``VLLM_USE_V2_MODEL_RUNNER`` is
    left alone: LLaDA's config hook chooses vLLM's V1 runner itself."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HUB_OFFLINE", "1")
        mp.setenv("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
        mp.setenv("VLLM_CACHE_ROOT", str(tmp_path_factory.mktemp("vllm_cache")))
        mp.delenv("VLLM_TARGET_DEVICE", raising=False)
        yield


@pytest.fixture(scope="module")
def llm(request, ckpt, vllm_gpu_env):
    """The denoising engine on the module's ``ckpt`` with its ``ENGINE_ARGS``:
    our scheduler (tracing what step 0 frees) and worker."""
    from maskkv_vllm.vllm_adapter.entrypoints.api import make_llm

    args = request.module.ENGINE_ARGS
    engine = make_llm(ckpt, scheduler_cls=tracing_scheduler_cls(), **args)
    yield engine
    shutdown(engine)


@pytest.fixture
def scheduler(llm):
    """The engine's tracing scheduler, its traces cleared."""
    sched = llm.llm_engine.engine_core.engine_core.scheduler
    sched.reset()
    return sched


def shutdown(llm, shutdown_ray: bool = False) -> None:
    """Stop an in-process vLLM engine and give its GPU memory back, so that the
    next engine's memory profiling sees the whole device again."""
    from vllm.distributed import cleanup_dist_env_and_memory

    llm.llm_engine.engine_core.shutdown()
    del llm
    gc.collect()
    cleanup_dist_env_and_memory(shutdown_ray=shutdown_ray)
    torch.cuda.empty_cache()


def tracing_scheduler_cls():
    """``MaskKVDiffusionScheduler`` recording the free blocks after every step
    and, per request, what step 0's release left: blocks freed, blocks held
    before and after it, and the kept entries per layer and KV head."""
    from maskkv_vllm.vllm_adapter.core.scheduler import MaskKVDiffusionScheduler

    class TracingScheduler(MaskKVDiffusionScheduler):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.free_after_step: list[int] = []
            self.freed: dict[str, int] = {}
            self.held: dict[str, tuple[int, int]] = {}
            self.kept: dict[str, dict[int, list[int]]] = {}

        def reset(self) -> None:
            for trace in (self.free_after_step, self.freed, self.held, self.kept):
                trace.clear()

        def update_from_output(self, scheduler_output, model_runner_output):
            out = super().update_from_output(scheduler_output, model_runner_output)
            pool = self.kv_cache_manager.block_pool
            self.free_after_step.append(pool.get_num_free_blocks())
            return out

        def release_unused_blocks(self, req_id, kept_lengths):
            before = self.block_manager.num_held(req_id)
            freed = super().release_unused_blocks(req_id, kept_lengths)
            self.freed[req_id] = freed
            self.held[req_id] = (before, self.block_manager.num_held(req_id))
            self.kept[req_id] = kept_lengths
            return freed

    return TracingScheduler


def require_plugin_entry_point() -> None:
    """Skip unless ``maskkv`` is a ``vllm.general_plugins`` entry point: vLLM's
    other processes (API server, engine core, Ray workers) load the plugin only
    through it (``pip install -e .``, or ``maskkv_vllm.egg-info`` on the path)."""
    names = {ep.name for ep in metadata.entry_points(group="vllm.general_plugins")}
    if "maskkv" not in names:
        pytest.skip("the maskkv vllm.general_plugins entry point is not installed")


def _gpu_check():
    """``scripts/gpu_check.py`` as a module (its model helpers draw on the GPU)."""
    module = sys.modules.get("gpu_check")
    if module is None:
        spec = importlib.util.spec_from_file_location("gpu_check", GPU_CHECK)
        module = sys.modules["gpu_check"] = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    return module


def gpu_model(seed: int = 0, **shape):
    """(model, tokenizer) of ``tiny_config(**shape)`` in bf16, weights drawn on
    the GPU (nothing written)."""
    from maskkv_vllm.models.tiny import tiny_config

    return _gpu_check().device_model(tiny_config(**shape), "cuda", "bfloat16", seed)


def write_gpu_checkpoint(out_dir: Path, seed: int = 0, **shape) -> Path:
    """A ``tiny_config(**shape)`` checkpoint whose weights are drawn on the GPU
    and saved in bf16."""
    from maskkv_vllm.models.tiny import byte_tokenizer, save_checkpoint, tiny_config

    config = tiny_config(**shape)
    weights = _gpu_check().device_state_dict(config, "cuda", seed, torch.bfloat16)
    weights = {name: w.cpu() for name, w in weights.items()}
    return save_checkpoint(out_dir, config, weights, byte_tokenizer())
