"""vLLM's CUDA defaults, emulated on the CPU wheel: the config hook owns LLaDA's.

The CUDA wheel's Python is the CPU wheel's apart from the platform files, so
what CUDA does differently here is two settings the CPU platform hides:
Triton imports (``vllm.config.vllm.HAS_TRITON``: vLLM then picks Model Runner
V2) and async scheduling stays on (``CpuPlatform.check_and_update_config``
turns it off; CUDA's does not). ``cuda_defaults`` undoes both, and each test
resolves the config, or runs an engine, as a CUDA box would.
"""

from __future__ import annotations

import pickle

import pytest

pytest.importorskip("vllm")

from maskkv_vllm.engine.llm import LLM as EmbeddedLLM  # noqa: E402
from maskkv_vllm.sampling_params import SamplingParams  # noqa: E402
from maskkv_vllm.vllm_adapter.entrypoints.api import generate  # noqa: E402
from maskkv_vllm.vllm_adapter.plugin import ARCHITECTURE, register  # noqa: E402

pytestmark = pytest.mark.vllm


@pytest.fixture
def cuda_defaults(monkeypatch):
    """Triton present and async scheduling left on, as on a CUDA install."""
    import vllm.config.vllm as vllm_config_module
    from vllm.platforms.cpu import CpuPlatform

    platform_hook = CpuPlatform.check_and_update_config.__func__

    def keep_async(cls, vllm_config):
        chosen = vllm_config.scheduler_config.async_scheduling
        platform_hook(cls, vllm_config)
        vllm_config.scheduler_config.async_scheduling = chosen

    monkeypatch.setattr(vllm_config_module, "HAS_TRITON", True)
    monkeypatch.setattr(CpuPlatform, "check_and_update_config", classmethod(keep_async))
    monkeypatch.delenv("VLLM_USE_V2_MODEL_RUNNER", raising=False)
    register()


def _record_scheduled_tokens(core) -> list[int]:
    """The tokens each of the engine core's steps schedules, from now on."""
    scheduled: list[int] = []
    schedule = core.scheduler.schedule

    def recording_schedule(*args, **kwargs):
        out = schedule(*args, **kwargs)
        scheduled.append(out.total_num_scheduled_tokens)
        return out

    core.scheduler.schedule = recording_schedule
    return scheduled


def _config(model, args_cls=None, **kwargs):
    from vllm.engine.arg_utils import EngineArgs

    args_cls = args_cls or EngineArgs
    return args_cls(model=str(model), dtype="float32", **kwargs).create_engine_config()


def test_the_emulation_reproduces_cuda_s_defaults(cuda_defaults, vllm_tiny_dir):
    from vllm.model_executor.models.config import MODELS_CONFIG_MAP

    hook = MODELS_CONFIG_MAP.pop(ARCHITECTURE)
    try:
        cfg = _config(vllm_tiny_dir)
    finally:
        MODELS_CONFIG_MAP[ARCHITECTURE] = hook
    # Without our hook: what vLLM 0.32 on CUDA resolves for an LLaDA checkpoint.
    assert cfg.use_v2_model_runner is True
    assert cfg.scheduler_config.async_scheduling is True


@pytest.mark.parametrize("entry", ["EngineArgs", "AsyncEngineArgs"])
def test_the_hook_pins_v1_and_turns_async_scheduling_off(
    cuda_defaults, vllm_tiny_dir, entry
):
    # vllm.LLM and Ray Serve LLM's replicas build EngineArgs; vllm serve and
    # maskkv vllm-serve AsyncEngineArgs; both run the architecture's hook.
    import vllm.engine.arg_utils as arg_utils

    cfg = _config(vllm_tiny_dir, getattr(arg_utils, entry))
    assert cfg.use_v2_model_runner is False
    assert cfg.scheduler_config.async_scheduling is False
    assert cfg.max_concurrent_batches == 1
    assert cfg.scheduler_config.scheduler_cls.endswith("MaskKVDiffusionScheduler")
    # The engine core, workers and Ray actors get the config pickled.
    import cloudpickle

    for dumps, loads in [(pickle.dumps, pickle.loads), (cloudpickle.dumps, None)]:
        copy = (loads or pickle.loads)(dumps(cfg))
        assert copy.use_v2_model_runner is False


def test_explicit_async_scheduling_is_turned_off_with_a_warning(
    cuda_defaults, vllm_tiny_dir, caplog
):
    cfg = _config(vllm_tiny_dir, async_scheduling=True)
    assert cfg.scheduler_config.async_scheduling is False
    assert "async scheduling is not supported for LLaDA" in caplog.text


def test_plain_vllm_llm_under_cuda_defaults_runs_one_engine_step_per_denoising_step(
    cuda_defaults, vllm_tiny_dir
):
    """``vllm.LLM`` as a user calls it: no scheduler, worker or runner flag."""
    from vllm import LLM

    llm = LLM(model=str(vllm_tiny_dir), dtype="float32", max_model_len=512, seed=0)
    core = llm.llm_engine.engine_core.engine_core
    assert type(core.model_executor.driver_worker.worker.model_runner).__name__ == (
        "MaskKVCPUModelRunner"
    )
    scheduled = _record_scheduled_tokens(core)
    params = SamplingParams(gen_length=16, block_length=8, steps=8)
    prompts = ["Hello", [256, 72, 101, 33]]
    ours = [(o.token_ids, o.text) for o in generate(llm, prompts, params)]
    embedded = EmbeddedLLM(str(vllm_tiny_dir), kv_policy="full", dtype="float32")
    ref = [
        (o.token_ids, o.text)
        for o in embedded.generate(prompts, params, use_tqdm=False)
    ]
    assert ours == ref
    # Both requests run together: step 0 (prefill of prompt + canvas), then 7
    # canvas steps; no step schedules nothing.
    assert len(scheduled) == 8
    assert 0 not in scheduled
    # The dual canvas cache under the same settings: a block step schedules
    # only the block's slots (8 per request), and the tokens stay the embedded
    # engine's.
    scheduled.clear()
    dual = SamplingParams(gen_length=16, block_length=8, steps=16, canvas_cache="dual")
    ours = [(o.token_ids, o.text) for o in generate(llm, prompts, dual)]
    ref = [
        (o.token_ids, o.text) for o in embedded.generate(prompts, dual, use_tqdm=False)
    ]
    assert ours == ref
    assert len(scheduled) == 16 and 0 not in scheduled
    assert scheduled[1:8] == [16] * 7 and scheduled[9:] == [16] * 7
    del llm


def test_plain_vllm_llm_under_cuda_defaults_serves_dream_s_samplers(
    cuda_defaults, tmp_path
):
    """A Dream checkpoint (grouped-query attention, shifted logits) through plain
    ``vllm.LLM`` as a CUDA box resolves it: Dream's rules, Fast-dLLM's block-wise
    sampler on its dual cache, MaskKV per KV head and the adaptive canvas cache
    give the embedded engine's tokens, and no engine step is empty."""
    from vllm import LLM

    from maskkv_vllm.models.tiny_dream import write_tiny_dream_checkpoint

    path = str(write_tiny_dream_checkpoint(tmp_path / "dream", seed=0))
    llm = LLM(model=path, dtype="float32", max_model_len=512, seed=0)
    core = llm.llm_engine.engine_core.engine_core
    assert core.vllm_config.use_v2_model_runner is False
    assert core.vllm_config.scheduler_config.async_scheduling is False
    scheduled = _record_scheduled_tokens(core)
    embedded = EmbeddedLLM(path, kv_policy="full", dtype="float32")
    prompts = ["Hello", [256, 72, 101, 33]]
    for params in (
        SamplingParams(gen_length=16, block_length=16, steps=8, remasking="entropy"),
        SamplingParams(
            gen_length=16, block_length=8, steps=8, remasking="fast_dllm_block",
            canvas_cache="dual_refresh",
        ),
        SamplingParams(
            gen_length=16, block_length=16, steps=8, remasking="origin", top_k=3,
            seed=1,
        ),
        SamplingParams(
            gen_length=16, block_length=8, steps=8, kv_policy="maskkv", kv_budget=2
        ),
        SamplingParams(gen_length=16, block_length=8, steps=8, canvas_cache="adaptive"),
    ):  # fmt: skip
        scheduled.clear()
        ours = [(o.token_ids, o.text) for o in generate(llm, prompts, params)]
        ref = [
            (o.token_ids, o.text)
            for o in embedded.generate(prompts, params, use_tqdm=False)
        ]
        assert ours == ref, params
        # One engine step per denoising step of the two requests run together.
        assert len(scheduled) == params.steps and 0 not in scheduled, scheduled
    del llm


def test_a_refused_request_under_cuda_defaults_leaves_the_engine_serving(
    cuda_defaults, vllm_tiny_dir
):
    """A reservation above the whole pool is refused by itself (finish_reason
    "error"), with CUDA's settings too, and the next request runs."""
    from vllm import LLM

    llm = LLM(
        model=str(vllm_tiny_dir), dtype="float32", max_model_len=512, seed=0,
        num_gpu_blocks_override=40,
    )  # fmt: skip
    core = llm.llm_engine.engine_core.engine_core
    assert core.vllm_config.scheduler_config.async_scheduling is False
    huge = SamplingParams(
        gen_length=256, block_length=32, steps=8, canvas_cache="adaptive"
    )
    with pytest.raises(ValueError, match=r"needs 48 KV blocks .* pool holds 39"):
        generate(llm, [[256] + [65] * 255], huge)
    assert not core.scheduler.requests and not core.scheduler.reserved
    params = SamplingParams(gen_length=16, block_length=8, steps=8)
    embedded = EmbeddedLLM(str(vllm_tiny_dir), kv_policy="full", dtype="float32")
    ref = embedded.generate(["Hello"], params, use_tqdm=False)
    assert generate(llm, ["Hello"], params)[0].token_ids == ref[0].token_ids
    free = core.scheduler.kv_cache_manager.block_pool.get_num_free_blocks()
    assert free == 39
    del llm
