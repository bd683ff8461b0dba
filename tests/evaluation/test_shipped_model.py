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


def test_the_shipped_model_retrieves_keys_with_the_full_cache_and_with_maskkv():
    llm = LLM("retrieval", kv_cache_memory="64MiB")
    held_out = samples(16, 256)
    full = score(llm, held_out, SamplingParams(**GREEDY, kv_policy="full"))
    assert sum(full) >= 13, f"{sum(full)}/16"
    # MaskKV keeping ~10% of the prompt's KV (B = 26 of ~256 per head).
    kept = score(
        llm, held_out, SamplingParams(**GREEDY, kv_policy="maskkv", kv_budget=26)
    )
    assert sum(kept) >= 13, f"{sum(kept)}/16"


def test_the_shipped_model_finds_the_needles_with_the_full_cache_and_with_maskkv():
    llm = LLM("retrieval", kv_cache_memory="64MiB")
    held_out = samples(8, 512, "needle")
    full = score(llm, held_out, SamplingParams(**GREEDY, kv_policy="full"))
    assert sum(full) >= 7, f"{sum(full)}/8"
    # MaskKV keeping ~5% of the prompt's KV.
    kept = score(
        llm, held_out, SamplingParams(**GREEDY, kv_policy="maskkv", kv_budget=26)
    )
    assert sum(kept) >= 7, f"{sum(kept)}/8"
