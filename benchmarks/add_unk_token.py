"""Give a word-vocabulary checkpoint the ``<unk>`` token (issue 25, item 8).

Its tokenizer mapped every word outside the vocabulary to EOS, so a question in
plain English became a run of EOS ids and an empty answer. This appends
``<unk>`` as the last id: the tokenizer is rewritten from
``synthetic.word_tokenizer`` (every other id unchanged), and the embedding and
LM head get one zero row (an unknown word carries no content; its logit is 0,
below every answer the model gives, checked by ``--check``). Idempotent.

    python benchmarks/add_unk_token.py maskkv_vllm/assets/llada-retrieval --check
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from maskkv_vllm.evaluation.synthetic import WORDS, make_sample, word_tokenizer  # noqa: E402

ROWS = ("model.transformer.wte.weight", "model.transformer.ff_out.weight")


def add_unk(ckpt: Path) -> bool:
    """Extend ``ckpt`` in place; False when it already has ``<unk>``."""
    config = json.loads((ckpt / "config.json").read_text())
    if config["vocab_size"] == len(WORDS):
        return False
    if config["vocab_size"] != len(WORDS) - 1:
        raise ValueError(
            f"{ckpt}: vocab_size {config['vocab_size']} is not the word list's"
        )
    weights = load_file(str(ckpt / "model.safetensors"))
    for name in ROWS:
        w = weights[name]
        weights[name] = torch.cat([w, w.new_zeros(1, w.shape[1])])
    save_file(weights, str(ckpt / "model.safetensors"), metadata={"format": "pt"})
    config["vocab_size"] = config["embedding_size"] = len(WORDS)
    (ckpt / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    word_tokenizer().save(str(ckpt / "tokenizer.json"))
    return True


def answers(ckpt: Path, n: int = 64, tokens: int = 512) -> tuple[list, float]:
    """Argmax answer ids of ``n`` held-out kv prompts (all 8 slots masked, one
    forward) and the smallest winning logit among them."""
    from maskkv_vllm.models.loader import load_checkpoint

    model, tok = load_checkpoint(ckpt)
    rng = random.Random(12345)
    out, low = [], float("inf")
    for _ in range(n):
        s = make_sample(rng, "kv", tokens)
        ids = tok.encode(s.prompt) + [model.config.mask_token_id] * 8
        with torch.no_grad():
            ids_t = torch.tensor([ids])
            hidden = model(ids_t, torch.arange(len(ids))[None])
            logits = model.logits(hidden[:, -8:])[0].float()
        best = logits.max(-1)
        out.append(best.indices.tolist())
        low = min(low, best.values.min().item())
    return out, low


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("ckpt", type=Path)
    parser.add_argument("--check", action="store_true", help="answers unchanged")
    args = parser.parse_args()
    before = answers(args.ckpt) if args.check else None
    changed = add_unk(args.ckpt)
    print(f"{args.ckpt}: {'<unk> added' if changed else 'already has <unk>'}")
    if args.check:
        after, low = answers(args.ckpt)
        same = after == before[0]
        print(
            f"answers of 64 held-out prompts unchanged: {same}; smallest "
            f"winning logit {low:.2f} (> 0, the <unk> row's logit)"
        )
        return 0 if same and low > 0 else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
