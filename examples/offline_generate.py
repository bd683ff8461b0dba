"""Generate with the embedded sampler from Python.

python examples/offline_generate.py [--model DIR]   # default: built-in tiny
"""

from __future__ import annotations

import argparse

from maskkv_vllm.config import CacheConfig
from maskkv_vllm.models.builtin import resolve_model
from maskkv_vllm.models.loader import load_checkpoint
from maskkv_vllm.sampling_params import SamplingParams
from maskkv_vllm.worker.model_runner import ModelRunner


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="tiny")
    args = ap.parse_args()
    model, tokenizer = load_checkpoint(resolve_model(args.model))
    sampler = ModelRunner(model, tokenizer, CacheConfig("prefix"))
    params = SamplingParams(gen_length=32, block_length=8, steps=32)
    prompts = ["What is a diffusion language model?", "Name three colours."]
    chats = [tokenizer.encode_chat([{"role": "user", "content": p}]) for p in prompts]
    for prompt, out in zip(prompts, sampler.generate(chats, params), strict=True):
        print(f"{prompt!r} -> {out.text!r} ({out.prompt_kv_bytes} B of prompt KV)")


if __name__ == "__main__":
    main()
