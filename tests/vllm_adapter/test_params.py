"""Settings parsing, the dead-block arithmetic and the version pin (no engine)."""

from __future__ import annotations

import pytest

pytest.importorskip("vllm")

from maskkv_vllm.config import MaskKVConfig  # noqa: E402
from maskkv_vllm.sampling_params import SamplingParams  # noqa: E402
from maskkv_vllm.vllm_adapter.params import (  # noqa: E402
    AdapterConfig,
    request_params,
)

pytestmark = pytest.mark.vllm


def test_additional_config_is_parsed_into_frozen_configs():
    cfg = AdapterConfig.from_additional_config(
        {"maskkv": {"alpha": 0.2, "boundary_layers": [0], "kv_policy": "maskkv",
                    "kv_budget": 64, "free_blocks": False}}
    )  # fmt: skip
    assert cfg.maskkv == MaskKVConfig(alpha=0.2, boundary_layers=(0,))
    assert (cfg.kv_policy, cfg.kv_budget, cfg.free_blocks) == ("maskkv", 64, False)
    assert AdapterConfig.from_additional_config(None) == AdapterConfig()


@pytest.mark.parametrize(
    ("raw", "match"),
    [
        ({"alhpa": 0.1}, "alhpa"),
        ({"alpha": 2.0}, "alpha=2.0"),
        ({"kv_policy": "maskkv"}, "needs a kv_budget"),
        ({"kv_policy": "nope", "kv_budget": 1}, "'nope'"),
    ],
)
def test_bad_additional_config_names_the_value(raw, match):
    with pytest.raises(ValueError, match=match):
        AdapterConfig.from_additional_config({"maskkv": raw})


def test_request_params_nested_flat_and_defaults():
    cfg = AdapterConfig(kv_policy="snapkv", kv_budget=16)
    nested = request_params({"maskkv": {"gen_length": 64, "steps": 32}}, 99, cfg)
    assert nested == SamplingParams(
        gen_length=64, block_length=32, steps=32, kv_policy="snapkv", kv_budget=16,
        canvas_cache="none",
    )  # fmt: skip
    flat = request_params({"maskkv_steps": 8, "maskkv_kv_policy": "full"}, 24, cfg)
    assert (flat.gen_length, flat.block_length, flat.steps) == (24, 24, 8)
    assert flat.kv_policy == "full"


def test_the_engine_default_canvas_cache_applies_to_requests_that_choose_none():
    cfg = AdapterConfig.from_additional_config({"maskkv": {"canvas_cache": "dual"}})
    assert request_params({}, 16, cfg).canvas_cache == "dual"
    chosen = request_params({"maskkv_canvas_cache": "none"}, 16, cfg)
    assert chosen.canvas_cache == "none"
    with pytest.raises(ValueError, match="canvas_cache='fast' is not one of"):
        AdapterConfig.from_additional_config({"maskkv": {"canvas_cache": "fast"}})


@pytest.mark.parametrize(
    ("extra", "match"),
    [
        ({"maskkv": {"gen_lenght": 8}}, "gen_lenght"),
        ({"maskkv_steps": 5, "maskkv_block_length": 8}, "steps=5"),
        ({"maskkv_cfg_scale": 1.0}, "cfg_scale=1.0"),
        ({"maskkv_canvas_cache": "fast"}, "canvas_cache='fast' is not one of"),
        ({"maskkv": 3}, "is not a dict"),
    ],
)
def test_bad_request_params_name_the_value(extra, match):
    with pytest.raises(ValueError, match=match):
        request_params(extra, 16, AdapterConfig())


def test_hooks_refuse_an_unpinned_vllm(monkeypatch):
    import vllm

    from maskkv_vllm.vllm_adapter.core.scheduler import MaskKVDiffusionScheduler
    from maskkv_vllm.vllm_adapter.plugin import require_vllm_version
    from maskkv_vllm.vllm_adapter.worker.cpu_model_runner import MaskKVCPUModelRunner
    from maskkv_vllm.vllm_adapter.worker.cpu_worker import MaskKVCPUWorker
    from maskkv_vllm.vllm_adapter.worker.gpu_model_runner import MaskKVGPUModelRunner
    from maskkv_vllm.vllm_adapter.worker.gpu_worker import MaskKVGPUWorker

    require_vllm_version("x")
    monkeypatch.setattr(vllm, "__version__", "0.99.0")
    hooks = (MaskKVDiffusionScheduler, MaskKVCPUWorker, MaskKVCPUModelRunner,
             MaskKVGPUWorker, MaskKVGPUModelRunner)  # fmt: skip
    for cls in hooks:
        with pytest.raises(RuntimeError, match="vLLM 0.99.0 is installed"):
            cls(None, None)


@pytest.mark.parametrize(
    ("xargs", "match"),
    [
        ({"maskkv_block_length": 5}, "block_length=5"),
        ({"maskkv_kv_policy": "nope"}, "'nope'"),
        ({"maskkv_stpes": 8}, "stpes"),
        ({"maskkv_temperature": "hot"}, "hot"),
    ],
)
def test_front_end_check_names_the_bad_value(xargs, match):
    from vllm import SamplingParams as VllmParams
    from vllm.exceptions import VLLMValidationError

    from maskkv_vllm.vllm_adapter.entrypoints.validation import MaskKVParamsValidator

    params = VllmParams(max_tokens=16, extra_args=xargs)
    with pytest.raises(VLLMValidationError, match=match) as err:
        MaskKVParamsValidator.validate_params(params)
    assert err.value.parameter == "vllm_xargs"


def test_front_end_check_passes_good_params_and_leaves_engine_defaults():
    from vllm import SamplingParams as VllmParams

    from maskkv_vllm.vllm_adapter.entrypoints.validation import MaskKVParamsValidator

    for extra in (None, {"maskkv_block_length": 8, "maskkv_steps": 8},
                  {"maskkv": {"gen_length": 16, "kv_policy": "snapkv"}}):  # fmt: skip
        # An evicting policy without a budget may take the engine's default
        # budget, which the front end cannot see: accepted here.
        MaskKVParamsValidator.validate_params(
            VllmParams(max_tokens=16, extra_args=extra)
        )
