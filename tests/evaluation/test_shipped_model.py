"""The shipped ``retrieval`` checkpoint solves key-value retrieval (issue 17): CI loads
it and checks a few held-out samples; training itself never runs in CI."""

from __future__ import annotations

import random

from maskkv_vllm.engine.llm import LLM
from maskkv_vllm.evaluation.harness import HELD_OUT_SEED, score
from maskkv_vllm.evaluation.synthetic import make_sample
from maskkv_vllm.sampling_params import SamplingParams

GREEDY = {"gen_length": 8, "block_length": 8, "steps": 8}


def samples(n: int, tokens: int, task: str = "kv"):
    rng = random.Random(HELD_OUT_SEED + tokens)
    return [make_sample(rng, task, tokens) for _ in range(n)]


def assert_answers(held_out, budget: int, need: int) -> None:
    """At least ``need`` of ``held_out`` right with the full cache and with MaskKV
    keeping B = ``budget`` entries per head per layer."""
    llm = LLM("retrieval", dtype="float32", kv_cache_memory="64MiB")
    for policy, b in (("full", None), ("maskkv", budget)):
        got = score(
            llm, held_out, SamplingParams(**GREEDY, kv_policy=policy, kv_budget=b)
        )
        assert sum(got) >= need, f"{policy}: {sum(got)}/{len(held_out)}"


def test_the_shipped_model_retrieves_keys_with_the_full_cache_and_with_maskkv():
    # MaskKV keeping ~10% of the prompt's KV (B = 26 of ~256 per head).
    assert_answers(samples(16, 256), budget=26, need=13)


def test_the_shipped_model_finds_the_needles_with_the_full_cache_and_with_maskkv():
    # MaskKV keeping ~5% of the prompt's KV.
    assert_answers(samples(8, 512, "needle"), budget=26, need=7)


def test_the_shipped_model_retrieves_keys_at_2048_tokens():
    # Run 5's RoPE base (2e4) carries the content match this far back: the weights
    # before it (base 1e4) got 5 of these 8 with either cache, these get 7.
    assert_answers(samples(8, 2048), budget=102, need=6)
