"""The sampler on real tiny checkpoints: cache modes, batching, seeds, errors."""

from __future__ import annotations

import pytest
import torch

from maskkv_vllm.config import CacheConfig
from maskkv_vllm.kv_cache.dense_prompt_cache import (
    CachedPromptAttention,
    CapturingAttention,
    PromptKV,
)
from maskkv_vllm.kv_cache.forward_batch import canvas_batch, full_batch
from maskkv_vllm.sampling_params import SamplingParams
from maskkv_vllm.worker import model_runner
from maskkv_vllm.worker.model_runner import ModelRunner

PROMPTS = ["The quick brown fox", "x", "Diffusion models unmask a canvas of tokens."]
GREEDY = SamplingParams(gen_length=16, block_length=8, steps=16)
SAMPLED = SamplingParams(
    gen_length=16, block_length=4, steps=8, temperature=0.8, seed=3
)
CFG = SamplingParams(gen_length=8, block_length=8, steps=8, cfg_scale=1.0)
THRESHOLD = SamplingParams(gen_length=16, block_length=8, steps=16, threshold=0.05)
ALL_PARAMS = [GREEDY, SAMPLED, CFG, THRESHOLD]
PARAM_IDS = ["greedy", "sampled", "cfg", "threshold"]


def sampler(model_tok, mode="prefix", refresh=None, **kw):
    model, tok = model_tok
    return ModelRunner(model, tok, CacheConfig(mode, refresh), **kw)


@pytest.mark.parametrize("params", ALL_PARAMS, ids=PARAM_IDS)
@pytest.mark.parametrize("fixture", ["tiny", "gqa"])
def test_prefix_refreshed_every_step_equals_none(request, fixture, params):
    model_tok = request.getfixturevalue(fixture)
    none = sampler(model_tok, "none").generate(PROMPTS, params)
    prefix = sampler(model_tok, "prefix", refresh=1).generate(PROMPTS, params)
    assert [o.token_ids for o in prefix] == [o.token_ids for o in none]
    assert all(o.prompt_kv_bytes == 0 for o in none)
    assert all(o.prompt_kv_bytes > 0 for o in prefix)


def test_cached_prompt_attention_reproduces_the_full_forward(gqa):
    """Canvas-only forward over captured prompt KV = the full forward on that canvas."""
    model, tok = gqa
    prompts = [torch.tensor(tok.encode(p)) for p in PROMPTS]
    gen = torch.Generator().manual_seed(0)
    canvases = [torch.randint(0, 262, (n,), generator=gen) for n in (8, 16, 4)]
    full = full_batch(prompts, canvases, pad_id=257)
    stores = [PromptKV() for _ in prompts]
    attn = CapturingAttention(full.key_mask, full.prompt_spans, stores)
    hidden_full = model(full.input_ids, full.positions, attn)
    assert [s.num_tokens for s in stores] == [len(p) for p in prompts]
    assert len(stores[0].keys) == model.config.n_layers
    cb = canvas_batch([len(p) for p in prompts], canvases, pad_id=257)
    hidden = model(
        cb.input_ids, cb.positions, CachedPromptAttention(stores, cb.key_mask)
    )
    # Hidden states reach |h| ~ 50 with the tiny model's 2x init: compare relative
    # to that scale (fp32 rounding, a different summation order).
    scale = hidden_full.abs().max().item()
    for row, c in enumerate(canvases):
        n = c.shape[0]
        want = hidden_full[row, full.canvas_start : full.canvas_start + n]
        torch.testing.assert_close(hidden[row, :n], want, atol=1e-6 * scale, rtol=1e-5)


def test_prefix_recomputes_prompt_only_on_refresh(tiny, monkeypatch):
    calls = []
    real = model_runner.full_batch
    monkeypatch.setattr(
        model_runner, "full_batch", lambda *a: calls.append(1) or real(*a)
    )
    sampler(tiny, "prefix").generate(["abc"], GREEDY)
    assert len(calls) == 1  # the first step only
    calls.clear()
    sampler(tiny, "prefix", refresh=4).generate(["abc"], GREEDY)
    assert len(calls) == 4  # steps 0, 4, 8, 12 of 16
    calls.clear()
    sampler(tiny, "none").generate(["abc"], GREEDY)
    assert len(calls) == 16


@pytest.mark.parametrize("mode", ["none", "prefix"])
@pytest.mark.parametrize("params", ALL_PARAMS, ids=PARAM_IDS)
def test_padding_in_a_batch_changes_nothing(tiny, mode, params):
    s = sampler(tiny, mode)
    batched = s.generate(PROMPTS, params)
    alone = [s.generate([p], params)[0] for p in PROMPTS]
    assert [o.token_ids for o in batched] == [o.token_ids for o in alone]
    assert [o.num_steps for o in batched] == [o.num_steps for o in alone]


def test_mixed_params_in_one_batch(tiny):
    s = sampler(tiny, "prefix", refresh=3)
    prompts = PROMPTS[:2] + PROMPTS[:2]
    batched = s.generate(prompts, ALL_PARAMS)
    alone = [s.generate([p], sp)[0] for p, sp in zip(prompts, ALL_PARAMS, strict=True)]
    assert [o.token_ids for o in batched] == [o.token_ids for o in alone]


def test_waves_of_max_num_seqs_change_nothing(tiny):
    wide = sampler(tiny).generate(PROMPTS, SAMPLED)
    narrow = sampler(tiny, max_num_seqs=1).generate(PROMPTS, SAMPLED)
    assert [o.text for o in wide] == [o.text for o in narrow]


def test_same_seed_same_text_other_seed_differs(tiny):
    s = sampler(tiny)
    a = s.generate(PROMPTS, SAMPLED)
    b = s.generate(PROMPTS, SAMPLED)
    assert [o.text for o in a] == [o.text for o in b]
    other = SamplingParams(**{**SAMPLED.__dict__, "seed": 4})
    c = s.generate(PROMPTS, other)
    assert [o.token_ids for o in a] != [o.token_ids for o in c]


def test_outputs_have_text_and_no_masks(tiny):
    _, tok = tiny
    outs = sampler(tiny).generate(PROMPTS, GREEDY)
    for o in outs:
        assert tok.mask_token_id not in o.token_ids
        assert not set(o.token_ids) & set(tok.stop_token_ids)
        assert o.text == tok.decode(o.token_ids)
        assert o.num_steps == 16
    # Several distinct tokens: the tiny model is random but not degenerate.
    assert len(set(outs[0].token_ids)) > 3


def test_prompt_kv_bytes_are_the_prompt_kv_size(tiny):
    model, tok = tiny
    (out,) = sampler(tiny).generate(["hello"], GREEDY)
    m = len(tok.encode("hello"))
    c = model.config
    assert out.prompt_kv_bytes == 2 * c.n_layers * c.n_kv_heads * m * c.head_dim * 4


def test_threshold_finishes_every_block(tiny):
    outs = sampler(tiny).generate(PROMPTS, THRESHOLD)
    assert all(1 <= o.num_steps <= 16 for o in outs)


def test_prompt_longer_than_max_model_len(tiny):
    s = sampler(tiny, max_model_len=32)
    with pytest.raises(
        ValueError, match=r"prompt of 20 tokens \+ gen_length 16 exceeds "
    ):
        s.generate(["a" * 19], GREEDY)
    assert s.generate(["a" * 15], GREEDY)[0].num_steps == 16


@pytest.mark.parametrize(
    "prompts, params, error, message",
    [
        ([[]], GREEDY, ValueError, "prompt is empty"),
        ([[1, 999]], GREEDY, ValueError, r"token id 999 is outside \[0, 262\)"),
        ([3.5], GREEDY, TypeError, "prompt must be a str or a list of ints"),
        ([], GREEDY, ValueError, "non-empty list"),
        ("abc", GREEDY, ValueError, "non-empty list"),
        (["a", "b"], [GREEDY], ValueError, "got 1 SamplingParams for 2 prompts"),
        (["a"], [{"steps": 3}], TypeError, "expected SamplingParams, got dict"),
    ],
)
def test_bad_inputs(tiny, prompts, params, error, message):
    with pytest.raises(error, match=message):
        sampler(tiny).generate(prompts, params)


def test_bad_sampler_sizes(tiny):
    with pytest.raises(ValueError, match="max_num_seqs=0"):
        sampler(tiny, max_num_seqs=0)
    with pytest.raises(ValueError, match="max_model_len=-1"):
        sampler(tiny, max_model_len=-1)


@pytest.mark.parametrize("params", ALL_PARAMS, ids=PARAM_IDS)
def test_early_stop_changes_no_output(tiny, params):
    model, tok = tiny
    eos_prompt = "x"  # a prompt whose answer holds an EOS on the tiny model
    prompts = [*PROMPTS, eos_prompt]
    early = ModelRunner(model, tok, CacheConfig("prefix")).generate(prompts, params)
    full = ModelRunner(model, tok, CacheConfig("prefix"), early_stop=False)
    late = full.generate(prompts, params)
    assert [o.token_ids for o in early] == [o.token_ids for o in late]
    assert [o.finish_reason for o in early] == [o.finish_reason for o in late]
    assert sum(o.num_steps for o in early) <= sum(o.num_steps for o in late)
