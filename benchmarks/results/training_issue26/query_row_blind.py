"""Does the query token find the answer's first digit without the canvas? (issue 26)

    OMP_NUM_THREADS=1 python benchmarks/results/training_issue26/query_row_blind.py \\
        --model maskkv-runs/r26e --prompt-tokens 128

For a shifted model (Dream) the answer's first token is read from the last prompt
token's output. On held-out ``kv`` prompts (all-masked canvas, one forward) this
counts how often that output's argmax is the first digit, with every query seeing
every key and with the prompt's queries blind to the canvas
(``train_model.BlindPromptAttention``). A model right only with the canvas visible
reads the first digit off the mask tokens rather than from the record.
"""

from __future__ import annotations

import argparse
import random
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
import train_model as tm  # noqa: E402

from maskkv_vllm.models.builtin import resolve_model  # noqa: E402


@torch.no_grad()
def first_digit_hits(model, samples, blind: bool) -> int:
    """Prompts whose query token's output argmax is the answer's first token."""
    hits = 0
    for prompt, answer in samples:
        m, length = len(prompt), tm.GEN_LENGTH
        ids = torch.tensor([prompt + [model.config.mask_token_id] * length])
        keys = torch.ones(1, m + length, dtype=torch.bool)
        attn = tm.BlindPromptAttention(keys, torch.tensor([blind]))
        hidden = model(ids, torch.arange(m + length)[None], attn)
        hits += int(model.logits(hidden[0, m - 1]).argmax() == answer[0])
    return hits


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--prompt-tokens", type=int, default=128)
    ap.add_argument("--samples", type=int, default=32)
    args = ap.parse_args()
    model = tm.load_model(resolve_model(args.model)).float().eval()
    if not tm.shift_of(model.config):
        raise ValueError(f"{args.model} does not shift its logits: not a Dream model")
    n, tok = args.prompt_tokens, tm.word_tokenizer()
    rng = random.Random(tm.EVAL_SEED + n + tm.TASK_SEED["kv"])
    samples = [tm.prompt_targets(rng, tok, "kv", n, 0)[:2] for _ in range(args.samples)]
    for blind in (False, True):
        hits = first_digit_hits(model, samples, blind)
        print(f"prompt blind to the canvas: {blind}; first digit from the query "
              f"token's output right on {hits}/{len(samples)} prompts")  # fmt: skip


if __name__ == "__main__":
    main()
