"""``llm_config``: the Ray Serve LLM fields for LLaDA, without Ray or vLLM."""

from __future__ import annotations

import pytest

from maskkv_vllm.distributed.ray_serve_llm import CPU_ENV, llm_config
from maskkv_vllm.models.tokenizer import CHAT_TEMPLATE


def test_cpu_config_loads_the_plugin_and_pins_the_chat_template():
    cfg = llm_config("/ckpt", maskkv={"kv_policy": "maskkv", "kv_budget": 64})
    assert cfg["model_loading_config"] == {"model_id": "llada", "model_source": "/ckpt"}
    assert cfg["accelerator_config"] == {"kind": "cpu"}
    assert cfg["deployment_config"] == {"num_replicas": 1}
    assert cfg["engine_kwargs"] == {
        "tensor_parallel_size": 1,
        "chat_template": CHAT_TEMPLATE,
        "additional_config": {"maskkv": {"kv_policy": "maskkv", "kv_budget": 64}},
    }
    assert cfg["runtime_env"]["env_vars"] == {"VLLM_PLUGINS": "maskkv", **CPU_ENV}


def test_gpu_config_sets_no_cpu_variables_and_user_values_win():
    cfg = llm_config(
        "/ckpt", device="gpu", num_replicas=2, tensor_parallel_size=4,
        engine_kwargs={"chat_template": "t", "max_model_len": 4096},
        env_vars={"HF_HUB_OFFLINE": "1"},
    )  # fmt: skip
    assert cfg["accelerator_config"] == {"kind": "gpu"}
    assert cfg["deployment_config"] == {"num_replicas": 2}
    assert cfg["engine_kwargs"] == {
        "tensor_parallel_size": 4, "chat_template": "t", "max_model_len": 4096,
    }  # fmt: skip
    assert cfg["runtime_env"]["env_vars"] == {
        "VLLM_PLUGINS": "maskkv", "HF_HUB_OFFLINE": "1",
    }  # fmt: skip


@pytest.mark.parametrize(
    ("kwargs", "named"),
    [
        ({"device": "tpu"}, "device='tpu'"),
        ({"num_replicas": 0}, "num_replicas=0"),
        ({"tensor_parallel_size": 1.5}, "tensor_parallel_size=1.5"),
    ],
)
def test_bad_values_are_refused_by_name(kwargs, named):
    with pytest.raises(ValueError, match=named.replace(".", r"\.")):
        llm_config("/ckpt", **kwargs)
