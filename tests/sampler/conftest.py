"""What the canvas-cache tests share: prompts and the sampler settings every
canvas cache must reproduce ``none`` under, where it is exact."""

from __future__ import annotations

from maskkv_vllm.sampling_params import SamplingParams

PROMPTS = ["The quick brown fox jumps", "x", "Paged KV for a diffusion LLM, " * 3]
GREEDY = SamplingParams(gen_length=16, block_length=4, steps=16)
CASES = {
    "greedy": GREEDY,
    "sampled": SamplingParams(
        gen_length=16, block_length=4, steps=8, temperature=0.7, seed=5
    ),
    "cfg": SamplingParams(gen_length=8, block_length=4, steps=8, cfg_scale=0.5),
    "threshold": SamplingParams(gen_length=16, block_length=8, steps=16, threshold=0.9),
    "maskkv": SamplingParams(
        gen_length=16, block_length=4, steps=16, kv_policy="maskkv", kv_budget=6
    ),
}
