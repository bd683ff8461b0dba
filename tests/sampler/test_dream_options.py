"""Dream's confidence rules, ``origin``, ``top_p``/``top_k``, ``alg_temp``, and
the filters.

Oracle: Dream's ``diffusion_generate`` loop at temperature 0 over the whole
canvas, written here from its published algorithm (logits shifted by one,
``linspace(1, eps, steps + 1)`` timesteps, ``int(masked * (1 - s / t))``
commits of the top confidences, all the rest at the last step) with its random
draws taken from one seeded generator in its order (``origin``: a uniform per
masked slot per step; ``alg_temp``: a multinomial over the whole sequence's
tempered confidences), on a tiny random Dream checkpoint. ``[MASK]`` is never a
candidate (our one documented difference), so the oracle forbids it too.
"""

from __future__ import annotations

import pytest
import torch

from maskkv_vllm.config import CacheConfig
from maskkv_vllm.models.dream import shift_logits
from maskkv_vllm.models.loader import load_checkpoint
from maskkv_vllm.models.tiny_dream import write_tiny_dream_checkpoint
from maskkv_vllm.sampler.top_filters import top_filter_mask
from maskkv_vllm.sampling_params import SamplingParams
from maskkv_vllm.worker.model_runner import ModelRunner

PROMPTS = [[5, 17, 99, 3, 42, 8], [200, 7]]


@pytest.fixture(scope="module")
def dream(tmp_path_factory):
    ckpt = write_tiny_dream_checkpoint(tmp_path_factory.mktemp("dream"), seed=2)
    return load_checkpoint(ckpt)


def _filter(logits, top_p, top_k):
    """Dream's top_p_logits then top_k_logits (fill with the dtype's min)."""
    low = torch.finfo(logits.dtype).min
    if top_p < 1:
        ordered, order = logits.sort(dim=-1, descending=True)
        drop = torch.softmax(ordered, dim=-1).cumsum(dim=-1) > top_p
        drop[..., 1:] = drop[..., :-1].clone()
        drop[..., 0] = False
        logits = logits.masked_fill(
            torch.zeros_like(drop).scatter(-1, order, drop), low
        )
    if top_k > 0:
        kth = logits.topk(top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, low)
    return logits


def reference(model, prompt, gen, steps, alg, seed, top_p=1.0, top_k=0, alg_temp=0.0):
    mask = model.config.mask_token_id
    gen_ = torch.Generator().manual_seed(seed)
    x = torch.tensor([prompt + [mask] * gen])
    times = torch.linspace(1, 1e-3, steps + 1)
    pos = torch.arange(x.shape[1])[None]
    for i in range(steps):
        masked = x == mask
        logits = shift_logits(model.logits(model(x, pos)))
        logits[..., mask] = -torch.inf
        probs = torch.softmax(_filter(logits[masked], top_p, top_k), dim=-1)
        conf, x0 = probs.max(dim=-1)
        t, s = times[i], times[i + 1]
        if alg == "origin":
            p = 1 - s / t if i < steps - 1 else 1
            take = torch.rand(x0.shape, generator=gen_) < p
            slots = masked.clone()
            slots[masked] = take
            x[slots] = x0[take]
            continue
        if alg == "topk_margin":
            top = probs.sort(dim=-1, descending=True).values
            conf = top[:, 0] - top[:, 1]
        elif alg == "entropy":
            conf = (probs * torch.log(probs + 1e-10)).sum(dim=-1)
        n = masked.sum() / 1
        k = int(n * (1 - s / t)) if i < steps - 1 else int(n)
        full = torch.full(x.shape, -torch.inf)
        full[masked] = conf
        proposal = torch.full_like(x, mask)
        proposal[masked] = x0
        if k > 0:
            if alg_temp > 0:
                weights = torch.softmax(full / alg_temp, dim=-1)
                idx = torch.multinomial(weights, k, generator=gen_)[0]
            else:
                idx = torch.topk(full, k).indices[0]
            x[0, idx] = proposal[0, idx]
    return x[0, len(prompt) :].tolist()


@pytest.mark.parametrize("alg", ["maskgit_plus", "topk_margin", "entropy"])
@pytest.mark.parametrize(("gen", "steps"), [(8, 8), (12, 4), (16, 5)])
def test_dream_s_rules_equal_its_loop_over_the_whole_canvas(dream, alg, gen, steps):
    model, tok = dream
    runner = ModelRunner(model, tok, CacheConfig("none"), early_stop=False)
    params = SamplingParams(
        gen_length=gen, block_length=gen, steps=steps, remasking=alg
    )
    got = [o.token_ids for o in runner.generate(PROMPTS, params)]
    want = [reference(model, p, gen, steps, alg, 0) for p in PROMPTS]
    assert got == [_cut(w, runner.stop_token_ids) for w in want]


def block_reference(model, prompt, gen, block, steps):
    """Fast-dLLM's block-wise Dream loop (``generation_utils_block._sample``,
    temperature 0), each forward over the whole sequence: at a block's start
    its first slot takes the argmax, then steps 1 .. n-1 of the block's
    ``linspace(1, eps, n + 1)`` commit ``int(masked * (1 - s / t))`` slots by
    negative entropy (all left at the last), ranked over the block's row."""
    mask = model.config.mask_token_id
    x = torch.tensor([prompt + [mask] * gen])
    pos = torch.arange(x.shape[1])[None]
    n = steps // (gen // block)
    times = torch.linspace(1, 1e-3, n + 1)

    def logits():
        out = shift_logits(model.logits(model(x, pos)))
        out[..., mask] = -torch.inf
        return out

    for b in range(gen // block):
        start = len(prompt) + b * block
        x[0, start] = logits()[0, start].argmax()
        for i in range(1, n):
            masked = x[:, start : start + block] == mask
            if not masked.any():
                break
            probs = torch.softmax(logits()[:, start : start + block][masked], dim=-1)
            x0 = probs.argmax(dim=-1)
            conf = (probs * torch.log(probs + 1e-10)).sum(dim=-1)
            num = masked.sum() / 1
            t, s = times[i], times[i + 1]
            k = int(num * (1 - s / t)) if i < n - 1 else int(num)
            row = torch.full((1, block), -torch.inf)
            row[masked] = conf
            proposal = torch.full((1, block), mask)
            proposal[masked] = x0
            if k > 0:
                idx = torch.topk(row, k).indices[0]
                x[0, start + idx] = proposal[0, idx]
    return x[0, len(prompt) :].tolist()


@pytest.mark.parametrize(("gen", "block", "steps"), [(16, 8, 8), (12, 4, 6), (8, 8, 4)])
def test_fast_dllm_block_variant_equals_its_loop(dream, gen, block, steps):
    model, tok = dream
    runner = ModelRunner(model, tok, CacheConfig("none"), early_stop=False)
    params = SamplingParams(
        gen_length=gen, block_length=block, steps=steps, remasking="fast_dllm_block"
    )
    got = [o.token_ids for o in runner.generate(PROMPTS, params)]
    want = [block_reference(model, p, gen, block, steps) for p in PROMPTS]
    assert got == [_cut(w, runner.stop_token_ids) for w in want]
    # Its first step commits the block's first slot, whatever the confidences.
    seq = runner.make_sequence(0, PROMPTS[0], params)
    runner.step([seq])
    assert (seq.canvas != model.config.mask_token_id).tolist() == [True] + [False] * (
        gen - 1
    )


CASES = {
    "origin": dict(remasking="origin"),
    "origin+top_p": dict(remasking="origin", top_p=0.5),
    "maskgit_plus+top_p": dict(remasking="maskgit_plus", top_p=0.3),
    "entropy+top_k": dict(remasking="entropy", top_k=3),
    "entropy+top_p+top_k": dict(remasking="entropy", top_p=0.4, top_k=5),
    "maskgit_plus+alg_temp": dict(remasking="maskgit_plus", alg_temp=0.05),
    "entropy+alg_temp": dict(remasking="entropy", alg_temp=0.5, top_k=4),
}


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize(("gen", "steps"), [(8, 8), (12, 4)])
@pytest.mark.parametrize("seed", [0, 7])
def test_dream_options_equal_its_loop(dream, case, gen, steps, seed):
    model, tok = dream
    runner = ModelRunner(model, tok, CacheConfig("none"), early_stop=False)
    opts = CASES[case]
    params = SamplingParams(
        gen_length=gen, block_length=gen, steps=steps, seed=seed, **opts
    )
    got = [o.token_ids for o in runner.generate(PROMPTS, params)]
    alg = opts["remasking"]
    extra = {k: v for k, v in opts.items() if k != "remasking"}
    want = [reference(model, p, gen, steps, alg, seed, **extra) for p in PROMPTS]
    assert got == [_cut(w, runner.stop_token_ids) for w in want]


def _cut(tokens, stops):
    """An answer as our outputs give it: up to its first stop token."""
    return next((tokens[:i] for i, t in enumerate(tokens) if t in stops), tokens)


def _answers(dream, gen, steps):
    """A function of SamplingParams fields -> our answers to PROMPTS."""
    model, tok = dream
    runner = ModelRunner(model, tok, CacheConfig("none"), early_stop=False)

    def run(**kw):
        params = SamplingParams(gen_length=gen, block_length=gen, steps=steps, **kw)
        return [o.token_ids for o in runner.generate(PROMPTS, params)]

    return run


def test_origin_depends_on_the_seed_and_alg_temp_changes_the_order(dream):
    run = _answers(dream, 12, 4)
    assert run(remasking="origin", seed=0) == run(remasking="origin", seed=0)
    assert run(remasking="origin", seed=0) != run(remasking="origin", seed=1)
    greedy = run(remasking="maskgit_plus", seed=0)
    assert run(remasking="maskgit_plus", seed=0, alg_temp=5.0) != greedy


def test_top_p_keeps_the_token_that_crosses_it():
    # probs 0.5, 0.3, 0.15, 0.05: top_p 0.6 keeps 0.5 and 0.3 (0.8 crosses it).
    logits = torch.tensor([[0.5, 0.3, 0.15, 0.05]]).log()
    assert top_filter_mask(logits, 0.6, 0).tolist() == [[False, False, True, True]]
    # 0.5 alone is not above 0.5, so the next one is kept too.
    assert top_filter_mask(logits, 0.5, 0).tolist() == [[False, False, True, True]]
    assert top_filter_mask(logits, 0.49, 0).tolist() == [[False, True, True, True]]
    assert top_filter_mask(logits, 1.0, 0) is None


def test_top_k_keeps_ties_and_applies_after_top_p():
    logits = torch.tensor([[3.0, 1.0, 1.0, 0.0], [0.0, 1.0, 2.0, 3.0]])
    assert top_filter_mask(logits, 1.0, 2).tolist() == [
        [False, False, False, True],  # the tie at the 2nd value is kept
        [True, True, False, False],
    ]
    # top_p 0.5 on row 1 keeps only 3.0 (p 0.64); top_k 2 cannot add 2.0 back.
    assert top_filter_mask(logits, 0.5, 2)[1].tolist() == [True, True, True, False]
    assert top_filter_mask(logits, 1.0, 0) is None
    assert top_filter_mask(logits, 1.0, 9).tolist() == [[False] * 4] * 2


@pytest.mark.parametrize(
    ("field", "value", "words"),
    [
        ("top_p", 0.0, "top_p=0.0"),
        ("top_p", 1.5, "top_p=1.5"),
        ("top_k", -2, "top_k=-2"),
        ("top_k", 2.5, "top_k=2.5"),
        ("alg_temp", -1.0, "alg_temp=-1.0"),
        ("alg_temp", float("inf"), "alg_temp=inf"),
        ("remasking", "orign", "remasking='orign'"),
    ],
)
def test_bad_values_are_named(field, value, words):
    with pytest.raises(ValueError, match=words):
        SamplingParams(gen_length=8, block_length=8, steps=8, **{field: value})


def test_fast_dllm_block_needs_two_steps_a_block():
    # One step a block would commit only each block's first slot.
    with pytest.raises(ValueError, match=r"at least 2 steps per block \(steps=2 "):
        SamplingParams(
            gen_length=8, block_length=4, steps=2, remasking="fast_dllm_block"
        )


def test_top_p_changes_a_sampled_answer_only_within_the_kept_tokens(dream):
    # Temperature > 0: with top_k 1 every candidate is the argmax at
    # probability 1, so the answer equals temperature 0's (top_k 1 too: the
    # confidences are those of the filtered distribution) whatever the seed.
    run = _answers(dream, 8, 8)
    greedy = run(remasking="maskgit_plus", top_k=1)
    for seed in (0, 1, 2):
        sampled = run(remasking="maskgit_plus", temperature=2.0, top_k=1, seed=seed)
        assert sampled == greedy
    assert run(remasking="maskgit_plus", temperature=2.0, seed=0) != greedy
    assert run(remasking="maskgit_plus") != greedy  # confidences of the filtered
