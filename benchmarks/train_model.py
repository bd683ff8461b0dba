"""Train a small LLaDA-architecture masked diffusion model on the synthetic tasks.

    python benchmarks/train_model.py --minutes 40

LLaDA's SFT objective: the prompt stays visible, each answer slot (the answer padded
with EOS to the canvas length) is masked with probability t ~ U(0.2, 1) (LLaDA: U(0, 1);
bounded here for small batches), and the cross-entropy of the masked slots is weighted
by 1/t. A length curriculum trains the
retrieval circuit on short haystacks first (cheap), then on 1-2k-token ones. Seeded;
the checkpoint is written with the official LLaDA tensor names, loadable like any
LLaDA checkpoint, and rewritten every ``--save-every`` steps. ``--recall-queries``
adds answered ``? name value ;`` lookups inside the prompt as extra masked targets
(a denser retrieval signal; measured 2026-12-02, it did not make the key-value task
learnable in 25-40 CPU minutes).
"""

from __future__ import annotations

import argparse
import json
import math
import random
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from maskkv_vllm.evaluation.synthetic import (
    make_sample,
    with_recall_queries,
    word_tokenizer,
)
from maskkv_vllm.models.attention import DenseAttention
from maskkv_vllm.models.llada import LLaDAModel
from maskkv_vllm.models.llada_config import LLaDAConfig
from maskkv_vllm.models.loader import load_model
from maskkv_vllm.models.tiny import save_checkpoint

GEN_LENGTH = 8
TOKENS_PER_STEP = 4096
T_MIN = 0.2


def make_config(args: argparse.Namespace, vocab: int, tok) -> LLaDAConfig:
    return LLaDAConfig(
        d_model=args.heads * args.head_dim,
        n_heads=args.heads,
        n_kv_heads=args.heads,
        n_layers=args.layers,
        mlp_hidden_size=args.mlp,
        vocab_size=vocab,
        embedding_size=vocab,
        mask_token_id=tok.token_to_id("<|mdm_mask|>"),
        eos_token_id=tok.token_to_id("<|endoftext|>"),
        pad_token_id=tok.token_to_id("<|endoftext|>"),
        max_sequence_length=4096,
    )


def curriculum(progress: float, rng: random.Random, short: float = 0.3) -> int:
    """Prompt length for this step: a few records first (the retrieval circuit
    forms on dense, cheap examples, for the first ``short`` of the run), then
    longer and longer haystacks over the rest."""
    if progress < short or short >= 1:
        return rng.randint(16, 64)
    # The rest of the run walks the default schedule's later phases (0.3 .. 1).
    progress = 0.3 + 0.7 * (progress - short) / (1 - short)
    if progress < 0.55:
        return rng.randint(64, 384)
    if progress < 0.8:
        return rng.randint(256, 1024)
    return rng.randint(512, 2048)


def make_batch(rng, tok, length, config, tokens_per_step=TOKENS_PER_STEP, recall=False):
    """Prompt + EOS-padded answer rows, and the slots to mask (answer + recall)."""
    eos, mask_id = config.eos_token_id, config.mask_token_id
    batch = max(1, tokens_per_step // (length + GEN_LENGTH))
    rows, targets, recall_slots = [], [], []
    for i in range(batch):
        s = make_sample(rng, ("kv", "vt")[i % 2], length)
        count = rng.choice([0, 0, 2, 4, 8]) if recall else 0
        words, slots = with_recall_queries(rng, s.prompt, count)
        prompt = tok.encode(" ".join(words)).ids
        answer = tok.encode(s.answer, add_special_tokens=False).ids
        answer = (answer + [eos] * GEN_LENGTH)[:GEN_LENGTH]
        rows.append(prompt)
        targets.append(answer)
        recall_slots.append([1 + j for j in slots])  # +1: BOS
    width = max(map(len, rows))
    pad = [config.pad_token_id]
    ids = torch.tensor(
        [pad * (width - len(r)) + r + t for r, t in zip(rows, targets, strict=True)]
    )
    lens = torch.tensor([len(r) for r in rows])
    col = torch.arange(width + GEN_LENGTH)
    offset = (width - lens)[:, None]
    positions = (col - offset).clamp_min(0)
    key_mask = col >= offset
    target = ids.clone()
    # t ~ U(T_MIN, 1): the 1/t weight of LLaDA's objective, bounded. With t near 0
    # a single (usually EOS) slot with weight ~1000 dominates a small batch's
    # gradient and the retrieval signal of the digits is drowned.
    t = T_MIN + (1 - T_MIN) * torch.rand(batch, 1)
    answer = torch.zeros_like(ids, dtype=torch.bool)
    answer[:, width:] = True
    for row, slots in enumerate(recall_slots):
        answer[row, [width - lens[row].item() + j for j in slots]] = True
    masked = answer & (torch.rand(ids.shape) < t)
    masked[:, width] |= ~masked.any(dim=1)  # at least one masked slot per row
    ids = torch.where(masked, torch.full_like(ids, mask_id), ids)
    return ids, positions, key_mask, target, masked, t


def loss_fn(model, ids, positions, key_mask, target, masked, t):
    hidden = model(ids, positions, DenseAttention(key_mask))
    logits = model.logits(hidden[masked])
    ce = F.cross_entropy(logits, target[masked], reduction="none")
    weights = (1.0 / t).expand_as(masked)[masked]
    return (ce * weights).sum() / (masked.shape[0] * GEN_LENGTH)


@torch.no_grad()
def quick_accuracy(model, tok, config, seed: int, length: int, n: int = 32) -> dict:
    """Per task, all answer slots masked, one parallel argmax: a cheap signal."""
    rng = random.Random(seed)
    hits = {"kv": 0, "vt": 0}
    model.eval()
    for i in range(n):
        s = make_sample(rng, ("kv", "vt")[i % 2], length)
        prompt = tok.encode(s.prompt).ids
        ids = torch.tensor([prompt + [config.mask_token_id] * GEN_LENGTH])
        hidden = model(ids, torch.arange(ids.shape[1])[None])
        pred = model.logits(hidden[0, len(prompt) :]).argmax(-1).tolist()
        want = tok.encode(s.answer, add_special_tokens=False).ids
        ok = pred[: len(want)] == want and pred[len(want)] == config.eos_token_id
        hits[s.task] += ok
    model.train()
    return {task: 2 * h / n for task, h in hits.items()}


def save(model, config, tok, out: Path, meta: dict) -> None:
    state = {
        k: v.detach().to(torch.bfloat16).contiguous()
        for k, v in model.state_dict().items()
    }
    tmp = out.with_name(out.name + ".tmp")
    save_checkpoint(tmp, config, state, tok)
    (tmp / "training.json").write_text(json.dumps(meta, indent=2))
    if out.exists():
        for f in out.iterdir():
            f.unlink()
        out.rmdir()
    tmp.rename(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="maskkv_vllm/assets/llada-retrieval")
    ap.add_argument("--minutes", type=float, default=40)
    ap.add_argument("--steps", type=int, default=3000, help="at most this many")
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--head-dim", type=int, default=64)
    ap.add_argument("--mlp", type=int, default=512)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--save-every", type=int, default=200)
    ap.add_argument("--init", default=None, help="continue from this checkpoint")
    ap.add_argument(
        "--short",
        type=float,
        default=0.3,
        help="fraction of the run on 16-64-token prompts",
    )
    ap.add_argument("--tokens-per-step", type=int, default=TOKENS_PER_STEP)
    ap.add_argument(
        "--recall-queries",
        action="store_true",
        help="add 0-8 answered queries inside each prompt (tried "
        "2026-12-02; did not make key-value retrieval learnable)",
    )
    args = ap.parse_args()

    torch.manual_seed(args.seed)
    rng = random.Random(args.seed)
    tok = word_tokenizer()
    config = make_config(args, tok.get_vocab_size(), tok)
    model = LLaDAModel(config)
    for p in model.parameters():
        if p.dim() == 2:
            torch.nn.init.normal_(p, std=0.02)
    if args.init:
        model.load_state_dict(load_model(args.init).state_dict())
    model.requires_grad_(True).train()
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.01)
    out = Path(args.out)
    prior = None
    if args.init:
        prior = json.loads((Path(args.init) / "training.json").read_text())
    start = time.monotonic()
    history = []
    for step in range(1, args.steps + 1):
        # Progress follows the clock, so a busy machine shortens the run but still
        # walks the whole curriculum and learning-rate schedule.
        elapsed = (time.monotonic() - start) / 60
        progress = min(1.0, max(step / args.steps, elapsed / args.minutes))
        warm = min(1.0, step / 100)
        lr = args.lr * warm * 0.5 * (1 + math.cos(math.pi * progress))
        for g in opt.param_groups:
            g["lr"] = lr
        length = curriculum(progress, rng, args.short)
        batch = make_batch(
            rng, tok, length, config, args.tokens_per_step, args.recall_queries
        )
        loss = loss_fn(model, *batch)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if step % 25 == 0:
            print(f"step {step} len {length} loss {loss.item():.3f} lr {lr:.2e} "
                  f"{elapsed:.1f} min", flush=True)  # fmt: skip
        done = progress >= 1.0
        if step % args.save_every == 0 or done:
            acc = {n: quick_accuracy(model, tok, config, 10_000 + step, n)
                   for n in (64, 256, 1024)}  # fmt: skip
            history.append({"step": step, "minutes": elapsed, "accuracy": acc})
            print(f"step {step}: quick accuracy {acc}", flush=True)
            meta = {"args": vars(args), "history": history, "objective": "LLaDA SFT"}
            if args.init:
                meta["continued_from"] = prior
            save(model, config, tok, out, meta)
        if done:
            break


if __name__ == "__main__":
    main()
