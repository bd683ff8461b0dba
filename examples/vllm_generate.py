"""Generate with LLaDA (+ MaskKV) through vLLM; prints one JSON line per prompt.

    VLLM_TARGET_DEVICE=cpu VLLM_CPU_KVCACHE_SPACE=1 \
        python examples/vllm_generate.py MODEL_DIR "Hello" --gen-length 32 \
        --kv-policy maskkv --kv-budget 64

vLLM starts its engine core in a subprocess (spawn) unless
VLLM_ENABLE_V1_MULTIPROCESSING=0, hence the ``__main__`` guard.
"""

from __future__ import annotations

import argparse
import json

from maskkv_vllm.sampling_params import SamplingParams
from maskkv_vllm.vllm_adapter.entrypoints.api import generate, make_llm


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("model")
    p.add_argument("prompts", nargs="+")
    p.add_argument("--gen-length", type=int, default=32)
    p.add_argument("--block-length", type=int, default=8)
    p.add_argument("--steps", type=int, default=16)
    p.add_argument("--kv-policy", default=None)
    p.add_argument("--kv-budget", type=int, default=None)
    p.add_argument("--max-model-len", type=int, default=512)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    llm = make_llm(args.model, max_model_len=args.max_model_len)
    params = SamplingParams(
        gen_length=args.gen_length,
        block_length=args.block_length,
        steps=args.steps,
        kv_policy=args.kv_policy,
        kv_budget=args.kv_budget,
    )
    for out in generate(llm, args.prompts, params):
        print(json.dumps({"token_ids": out.token_ids, "text": out.text}))


if __name__ == "__main__":
    main()
