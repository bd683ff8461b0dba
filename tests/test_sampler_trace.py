"""benchmarks/sampler_trace.py: LLaDA's sampler replayed a step at a time (issue 26)."""

from __future__ import annotations

import random
import sys
from pathlib import Path

import pytest
import torch

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCH))
import sampler_trace as st  # noqa: E402
import train_model as tm  # noqa: E402

from maskkv_vllm.config import CacheConfig  # noqa: E402
from maskkv_vllm.sampling_params import SamplingParams  # noqa: E402
from maskkv_vllm.worker.model_runner import ModelRunner  # noqa: E402

# 2 layers: the second layer's prompt K/V depend on the canvas, so keeping them
# (the engine's prompt cache) and recomputing them (generate.py) can differ.
MICRO = ["--layers", "2", "--heads", "2", "--head-dim", "16", "--mlp", "32"]


def engine_answers(model, prompts, cache_mode):
    runner = ModelRunner(model, cache_config=CacheConfig(cache_mode=cache_mode),
                         max_num_seqs=16, early_stop=False)  # fmt: skip
    params = SamplingParams(gen_length=8, block_length=8, steps=8)
    return [out.token_ids for out in runner.generate(prompts, params)]


@pytest.mark.parametrize("arch", ["llada", "dream"])
def test_the_trace_ends_where_the_engine_s_sampler_does(tok, arch):
    args = tm.parse_args(["--out", "unused", *MICRO, "--arch", arch])
    model = tm.build(args, tok, seed=0)[0].eval()
    with torch.no_grad():  # sharper attention; with short prompts the canvas
        for p in model.parameters():  # then moves the prompt's K/V enough to
            p.mul_(6)  # change an answer (1 of these 8 in each architecture)
    rng = random.Random(3)
    prompts = [tm.prompt_targets(rng, tok, "kv", 16, 0)[0] for _ in range(8)]
    eos = model.config.eos_token_id
    finals = {}
    for cache, mode in [("prompt", "prefix"), ("none", "none")]:
        traces = [st.trace(model, p, 8, cache) for p in prompts]
        finals[cache] = [st.upto_eos(t.final, eos) for t in traces]
        assert finals[cache] == engine_answers(model, prompts, mode)
    assert finals["prompt"] == tm.sampled_answers(model, prompts)  # what checks score
    assert finals["prompt"] != finals["none"]  # the cache matters on these weights
    assert [t.first for t in traces] == tm.predict_answers(
        model, model.config, prompts
    ).tolist()
    for t in traces:
        assert sorted(t.order) == list(range(8))
        assert all(0 < c <= 1 for c in t.confidence)


def test_summary_counts_each_slot_s_commit_and_change():
    eos = 1
    wants = [[7, 8, 1], [7, 9, 1]]
    traces = [
        # right at once and at the end: slot 2 first, then 0, then 1
        st.Trace(
            first=[7, 8, 1],
            final=[7, 8, 1],
            order=[2, 0, 1],
            confidence=[1.0, 0.8, 0.6],
        ),
        # right at once, slot 1 changed later: 9 -> 4
        st.Trace(
            first=[7, 9, 1],
            final=[7, 4, 1],
            order=[2, 1, 0],
            confidence=[1.0, 0.5, 0.3],
        ),
    ]
    got = st.summarise(traces, wants, eos)
    assert (got["one_shot"], got["sampler"]) == (2, 1)
    assert (got["one_shot_only"], got["sampler_only"]) == (1, 0)
    slot0, slot1 = got["slots"][:2]
    assert slot0 == {"step": 1.5, "confidence": pytest.approx(0.55), "changed": 0.0,
                     "first_right": 1.0, "right": 1.0}  # fmt: skip
    assert slot1 == {"step": 1.5, "confidence": pytest.approx(0.55), "changed": 0.5,
                     "first_right": 1.0, "right": 0.5}  # fmt: skip
    assert got["slots"][2]["step"] == 0.0


def test_a_given_canvas_is_read_as_the_sampler_s_first_forward(tok):
    args = tm.parse_args(["--out", "unused", *MICRO, "--arch", "dream"])
    model = tm.build(args, tok, seed=0)[0].eval()
    prompt = tm.prompt_targets(random.Random(4), tok, "kv", 24, 0)[0]
    mask = model.config.mask_token_id
    assert (
        st.argmax_given(model, prompt, [mask] * 8) == st.trace(model, prompt, 8).first
    )
    assert st.eos_given([7, 8, 1, 1], mask, 1) == [mask, mask, 1, 1]


def test_word_accuracy_gives_the_eos_slots_and_one_true_word(tok, monkeypatch):
    seen = []

    def argmax(model, prompt, canvas):
        seen.append(canvas)
        return [7, 0, 9, 1]  # right, wrong, right, EOS

    monkeypatch.setattr(st, "argmax_given", argmax)
    samples = [([0], [7, 8, 9, 1]), ([0], [7, 8, 9, 1])]
    model = tm.build(tm.parse_args(["--out", "unused", *MICRO]), tok, seed=0)[0]
    m = model.config.mask_token_id
    assert st.word_accuracy(model, samples) == [1.0, 0.0, 1.0]
    assert seen[0] == [m, m, m, 1]
    assert st.word_accuracy(model, samples, keep=1) == [1.0, None, 1.0]
    assert seen[-1] == [m, 8, m, 1]


def test_an_unknown_cache_is_refused_by_name(tok):
    args = tm.parse_args(["--out", "unused", *MICRO])
    model = tm.build(args, tok, seed=0)[0].eval()
    with pytest.raises(ValueError, match="cache='paged'"):
        st.trace(model, [0, 7, 8], 4, cache="paged")


def test_the_sampler_s_answer_stops_at_its_first_eos():
    assert st.upto_eos([7, 1, 9, 1], 1) == [7]
    assert st.upto_eos([7, 8], 1) == [7, 8]
