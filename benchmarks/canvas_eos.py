"""Where a model's answer stops: per canvas slot, how often one argmax over the
all-masked canvas says EOS where the answer is EOS, and what it says instead.

Usage: ``python benchmarks/canvas_eos.py CKPT [--task needle] [--length 512]
[--samples 64] [--recall 0]``. Held-out prompts of the training script's checks (the
same seed; ``--recall N``: with N recall queries, digits masked, as training rows
have them); one JSON row: per slot, the share of prompts whose target there is EOS
(``eos_slots``), the mean EOS probability over them (``p_eos``), the share of them
answered EOS (``argmax_eos``) and, of the rest, the share answered with a filler
word or ``;`` (``filler``: needle's filler is ``x00 ... x10 ;``).
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import train_model as tm  # noqa: E402

from maskkv_vllm.evaluation.synthetic import FILLER, word_tokenizer  # noqa: E402


def slot_stats(model, task: str, length: int, n: int, recall: int = 0) -> dict:
    """Per-slot lists (``GEN_LENGTH`` long) of the module docstring's shares."""
    tok, config = word_tokenizer(), model.config
    rng = random.Random(tm.EVAL_SEED + length + tm.TASK_SEED[task])
    rows = []
    for _ in range(n):
        prompt, answer, slots = tm.prompt_targets(rng, tok, task, length, recall)
        for j in slots:
            prompt[j] = config.mask_token_id
        rows.append((prompt, answer))
    probs = tm.canvas_logits(model, config, [p for p, _ in rows]).float().softmax(-1)
    eos = config.eos_token_id
    filler = torch.tensor([tok.token_to_id(w) for w in FILLER.split()])
    want = torch.tensor([a for _, a in rows])  # (n, GEN_LENGTH)
    pred = probs.argmax(-1)
    is_eos = want == eos
    other = is_eos & (pred != eos)
    count = is_eos.sum(0).clamp_min(1)

    def share(x: torch.Tensor, of: torch.Tensor) -> list[float]:
        return [round(v, 3) for v in (x.sum(0) / of).tolist()]

    return {
        "eos_slots": share(is_eos, torch.full_like(count, n)),
        "p_eos": share(torch.where(is_eos, probs[..., eos], 0.0), count),
        "argmax_eos": share(is_eos & (pred == eos), count),
        "filler": share(other & torch.isin(pred, filler), other.sum(0).clamp_min(1)),
    }


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("checkpoint")
    ap.add_argument("--task", default="needle", choices=["kv", "vt", "needle"])
    ap.add_argument("--length", type=int, default=512, help="prompt tokens")
    ap.add_argument("--samples", type=int, default=64)
    ap.add_argument("--recall", type=int, default=0, help="masked recall queries")
    a = ap.parse_args(argv)
    torch.set_num_threads(1)
    model = tm.load_model(a.checkpoint).float().eval()
    stats = slot_stats(model, a.task, a.length, a.samples, a.recall)
    row = {"checkpoint": a.checkpoint, "task": a.task, "length": a.length,
           "samples": a.samples, "recall": a.recall, **stats}  # fmt: skip
    print(json.dumps(row))
    return row


if __name__ == "__main__":
    main()
