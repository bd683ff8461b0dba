"""Held-out ``kv`` exact match by how far back the queried record sits (issue 17).

    OMP_NUM_THREADS=1 python benchmarks/kv_by_distance.py --model retrieval \\
        --prompt-tokens 2048 [--rope-theta 20000]

The prompts and the one-argmax decoding of ``train_model.evaluate`` (all answer
slots masked). The queried record's distance from the end of the prompt is put in
quarters of the prompt (0 = the last quarter, nearest the question). A model whose
content match fades with distance scores lower in the far quarters. ``--rope-theta``
runs the same weights with another RoPE base (how the shipped model's run 5 began).
"""

from __future__ import annotations

import argparse
import dataclasses
import random
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
import train_model as tm  # noqa: E402

from maskkv_vllm.evaluation.synthetic import word_tokenizer  # noqa: E402
from maskkv_vllm.models.builtin import resolve_model  # noqa: E402
from maskkv_vllm.models.llada import LLaDAModel  # noqa: E402
from maskkv_vllm.models.loader import load_model  # noqa: E402


def quarter_of_query(prompt: list[int], num_tokens: int) -> int:
    """Quarter (0 = nearest the end) of the record whose key the prompt asks for."""
    key = prompt[-1]
    at = next(j for j, t in enumerate(prompt[:-2]) if t == key)
    return min(3, (len(prompt) - at) * 4 // num_tokens)


@torch.no_grad()
def by_distance(model, num_tokens: int, n: int, batch: int = 16) -> dict[int, list]:
    tok, c = word_tokenizer(), model.config
    rng = random.Random(tm.EVAL_SEED + num_tokens + tm.TASK_SEED["kv"])
    samples = [tm.prompt_targets(rng, tok, "kv", num_tokens, 0)[:2] for _ in range(n)]
    out: dict[int, list] = {q: [] for q in range(4)}
    for i in range(0, n, batch):
        rows = samples[i : i + batch]
        pred = tm.predict_answers(model, c, [p for p, _ in rows])
        for (p, a), row in zip(rows, pred, strict=True):
            out[quarter_of_query(p, num_tokens)].append(row.tolist() == a)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="retrieval")
    ap.add_argument("--prompt-tokens", type=int, default=2048)
    ap.add_argument("--samples", type=int, default=128)
    ap.add_argument("--rope-theta", type=float, default=None)
    args = ap.parse_args()
    model = load_model(resolve_model(args.model)).float().eval()
    if args.rope_theta:
        config = dataclasses.replace(model.config, rope_theta=args.rope_theta)
        other = LLaDAModel(config)
        other.load_state_dict(model.state_dict())
        model = other.eval()
    got = by_distance(model, args.prompt_tokens, args.samples)
    theta = model.config.rope_theta
    print(f"{args.model}, rope_theta {theta:g}, {args.prompt_tokens} tokens, "
          f"{args.samples} held-out kv prompts; exact match by the queried record's "
          "quarter of the prompt (0 = nearest the question):")  # fmt: skip
    for q, hits in got.items():
        share = sum(hits) / max(1, len(hits))
        print(f"  quarter {q}: {sum(hits)}/{len(hits)} = {share:.2f}")
    total = sum(map(sum, got.values()))
    print(f"  all: {total}/{args.samples} = {total / args.samples:.2f}")


if __name__ == "__main__":
    main()
