from __future__ import annotations

import pytest

from maskkv_vllm.config import CacheConfig
from maskkv_vllm.sampler.schedule import num_transfer_tokens
from maskkv_vllm.sampling_params import SamplingParams


@pytest.mark.parametrize(
    "masked, steps, expected",
    [
        (10, 4, [3, 3, 2, 2]),
        (8, 8, [1] * 8),
        (32, 4, [8, 8, 8, 8]),
        (3, 5, [1, 1, 1, 0, 0]),
        (0, 2, [0, 0]),
    ],
)
def test_num_transfer_tokens(masked, steps, expected):
    assert num_transfer_tokens(masked, steps) == expected
    assert sum(expected) == masked


def test_schedule_rejects_bad_counts():
    with pytest.raises(ValueError, match="steps=0"):
        num_transfer_tokens(4, 0)
    with pytest.raises(ValueError, match="num_masked=-1"):
        num_transfer_tokens(-1, 2)


def test_params_derived_counts():
    p = SamplingParams(gen_length=64, block_length=16, steps=32)
    assert (p.num_diffusion_blocks, p.steps_per_block) == (4, 8)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"gen_length": 30, "block_length": 8}, r"gen_length=30 is not a multiple of "),
        (
            {"gen_length": 32, "block_length": 8, "steps": 6},
            r"steps=6 is not divisible",
        ),
        ({"gen_length": 0}, r"gen_length=0 must be a positive integer"),
        ({"block_length": -8}, r"block_length=-8 must be a positive integer"),
        ({"steps": 0}, r"steps=0 must be a positive integer"),
        ({"steps": 2.5}, r"steps=2.5 must be a positive integer"),
        ({"temperature": -1.0}, r"temperature=-1.0 must be >= 0"),
        ({"cfg_scale": -0.5}, r"cfg_scale=-0.5 must be >= 0"),
        ({"remasking": "greedy"}, r"remasking='greedy' is not one of"),
        ({"threshold": 1.5}, r"threshold=1.5 must be in \(0, 1\]"),
        ({"threshold": 0.0}, r"threshold=0.0 must be in"),
        ({"seed": "7"}, r"seed='7' must be an integer"),
    ],
)
def test_params_validation(kwargs, message):
    with pytest.raises(ValueError, match=message):
        SamplingParams(**kwargs)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"cache_mode": "dual"}, r"cache_mode='dual' is not one of"),
        ({"prompt_refresh_interval": 0}, r"prompt_refresh_interval=0 must be"),
    ],
)
def test_cache_config_validation(kwargs, message):
    with pytest.raises(ValueError, match=message):
        CacheConfig(**kwargs)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        # 10**9 steps ran 78 s on the engine thread before (issue 14, item 6)
        ({"gen_length": 32, "steps": 10**9}, "steps=1000000000 exceeds gen_length=32"),
        # raised inside step() and failed every request in flight (item 3)
        ({"seed": 2**64}, r"seed=18446744073709551616 must lie in \[0, 2\*\*64\)"),
        ({"seed": -1}, r"seed=-1 must lie"),
        ({"temperature": float("inf")}, "temperature=inf must be >= 0 and finite"),
    ],
)
def test_unbounded_values_are_refused_naming_them(kwargs, match):
    with pytest.raises(ValueError, match=match):
        SamplingParams(**kwargs)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        # "'<=' not supported between instances of 'int' and 'str'" (issue 14, item 8)
        ({"temperature": "hot"}, "temperature='hot' must be a number"),
        ({"temperature": True}, "temperature=True must be a number"),
        ({"cfg_scale": [1]}, r"cfg_scale=\[1\] must be a number"),
        ({"threshold": "0.9"}, "threshold='0.9' must be a number or null"),
        ({"remasking": 3}, "remasking=3 must be a string"),
        ({"logits_eos_inf": 1}, "logits_eos_inf=1 must be a boolean"),
        ({"kv_policy": 7}, "kv_policy=7 must be a string or null"),
    ],
)
def test_wrong_types_are_refused_naming_the_field(kwargs, match):
    with pytest.raises(ValueError, match=match):
        SamplingParams(**kwargs)
