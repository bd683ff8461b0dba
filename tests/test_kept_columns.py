"""benchmarks/kept_columns.py: what a policy keeps where the answer is read."""

from __future__ import annotations

import random
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCH))
import kept_columns as kc  # noqa: E402
import train_model as tm  # noqa: E402

from maskkv_vllm.config import CacheConfig  # noqa: E402
from maskkv_vllm.eviction.config import MaskKVConfig  # noqa: E402
from maskkv_vllm.eviction.policy_set import PolicySet  # noqa: E402
from maskkv_vllm.sampling_params import SamplingParams  # noqa: E402
from maskkv_vllm.worker.model_runner import ModelRunner  # noqa: E402

MICRO = ["--layers", "2", "--heads", "2", "--head-dim", "16", "--mlp", "32"]


def test_the_full_cache_is_refused_by_name(tok):
    model = tm.build(tm.parse_args(["--out", "unused", *MICRO]), tok, seed=0)[0]
    with pytest.raises(ValueError, match="policy='full' keeps the whole prompt"):
        kc.run(model, [([0, 7, 8], [1])], "full", 4)


def test_shares_of_heads_keeping_the_key_the_digits_and_the_record():
    # BOS k1 : 4 5 6 ; k2 : 7 8 9 ; ? k2   (ids stand in for words)
    prompt = [0, 21, 6, 14, 15, 16, 7, 22, 6, 17, 18, 19, 7, 8, 22]
    kept = [
        {14, 9, 10, 11},  # the question's key and the record's three digits
        {7},  # the record's key only
        {3, 4, 5, 13},  # another record's digits and '?'
        {12},  # the record's ';'
    ]
    assert kc.shares(prompt, kept) == (0.25, 0.25, 0.75)


def test_recording_keeps_what_the_policy_keeps(tok):
    model = tm.build(tm.parse_args(["--out", "unused", *MICRO]), tok, seed=0)[0].eval()
    rng = random.Random(2)
    samples = [tm.prompt_targets(rng, tok, "kv", 48, 0)[:2] for _ in range(2)]
    right, means = kc.run(model, samples, "snapkv", 40)
    assert sorted(means) == [0, 1]
    for key, digits, any_col in means.values():
        assert key == 1.0  # SnapKV's window holds the last prompt token
        assert 0.0 <= digits <= any_col <= 1.0

    params = SamplingParams(gen_length=8, block_length=8, steps=8,
                            kv_policy="snapkv", kv_budget=40)  # fmt: skip
    outs = {}
    for name, policies in [
        ("plain", PolicySet(MaskKVConfig(), 2)),
        ("recording", kc.RecordingSet(MaskKVConfig(), 2)),
    ]:
        runner = ModelRunner(model, cache_config=CacheConfig(cache_mode="paged"),
                             policies=policies, early_stop=False)  # fmt: skip
        prompts = [p for p, _ in samples]
        outs[name] = [o.token_ids for o in runner.generate(prompts, params)]
        if name == "recording":
            kept = policies.recorders["snapkv"].kept
            assert sorted(layer for layer, _, _ in kept) == [0, 0, 1, 1]
            assert all(len(s) == 40 for _, _, heads in kept for s in heads)
            assert sorted(m for _, m, _ in kept) == sorted(len(p) for p in prompts) * 2
    assert outs["recording"] == outs["plain"]
    eos = model.config.eos_token_id
    want = [[t for t in w if t != eos] for _, w in samples]
    assert right == sum(o == w for o, w in zip(outs["plain"], want, strict=True))
