"""Does the resolved question's name hold its statement's right-hand side?

A linear probe of each layer's output at the last prompt token of one-hop ``vt``
prompts (``... xA = d ; ... xB = xA ; ... ? xB``, all-masked canvas): how well a
multinomial logistic regression reads off ``xA`` (the first lookup's result) and
``d`` (the answer) on held-out prompts, and ``xB`` itself (the token there: the
probe's own check). If ``xA`` is readable at some layer and ``d`` is not, the first
lookup happens and the second does not.

With ``--hops H`` (chains of H hops: ``? xC`` needs ``xC``'s right-hand side,
then that one's, ... H + 1 lookups to the digit), one column per lookup.

Usage: ``python benchmarks/results/training_issue26/name_probe.py CKPT [--length 128]
[--samples 2048] [--hops 1]``.
"""

from __future__ import annotations

import argparse
import random
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
import train_model as tm  # noqa: E402

from maskkv_vllm.evaluation.synthetic import word_tokenizer  # noqa: E402
from maskkv_vllm.models.attention import DenseAttention  # noqa: E402
from maskkv_vllm.models.loader import load_model  # noqa: E402

SEED = 321


@torch.no_grad()
def features(model, prompts: list[list[int]], batch: int = 64) -> torch.Tensor:
    """(layers, N, d_model): each block's output at each prompt's last token."""
    out = [[] for _ in model.blocks]
    grabbed: dict[int, torch.Tensor] = {}
    hooks = [b.register_forward_hook(lambda m, a, o, i=i: grabbed.__setitem__(i, o))
             for i, b in enumerate(model.blocks)]  # fmt: skip
    for k in range(0, len(prompts), batch):
        rows = prompts[k : k + batch]
        ids, positions, key_mask, width = tm.all_masked_rows(model.config, rows)
        model(ids, positions, DenseAttention(key_mask))
        for i in range(len(out)):
            out[i].append(grabbed[i][:, width - 1].float())
    for h in hooks:
        h.remove()
    return torch.stack([torch.cat(o) for o in out])


def probe_accuracy(x: torch.Tensor, y: torch.Tensor, train: int) -> float:
    """Held-out accuracy of a multinomial logistic regression fit on the first
    ``train`` rows (x standardised on them)."""
    mu, sd = x[:train].mean(0), x[:train].std(0) + 1e-6
    x = (x - mu) / sd
    w = torch.zeros(x.shape[1], int(y.max()) + 1, requires_grad=True)
    b = torch.zeros(int(y.max()) + 1, requires_grad=True)
    opt = torch.optim.Adam([w, b], lr=0.05, weight_decay=1e-3)
    for _ in range(300):
        opt.zero_grad()
        F.cross_entropy(x[:train] @ w + b, y[:train]).backward()
        opt.step()
    return ((x[train:] @ w + b).argmax(-1) == y[train:]).float().mean().item()


def classes(ids: list[int]) -> torch.Tensor:
    """Token ids as class indices 0..K-1."""
    index = {v: i for i, v in enumerate(sorted(set(ids)))}
    return torch.tensor([index[v] for v in ids])


def lookups(words: list[str]) -> list[str]:
    """The final question's name, then what each lookup finds, to the digit."""
    stated, seq = tm.statements(words), [words[-1]]
    while seq[-1] in stated:
        seq.append(stated[seq[-1]])
    return seq


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model")
    ap.add_argument("--length", type=int, default=128)
    ap.add_argument("--samples", type=int, default=2048)
    ap.add_argument("--hops", type=int, default=1, choices=[1, 2, 3])
    args = ap.parse_args(argv)
    torch.manual_seed(0)
    tok, model = word_tokenizer(), load_model(args.model)
    rng, vt = random.Random(SEED), tm.VtPrompts((args.hops,), 2)
    prompts, columns = [], [[] for _ in range(args.hops + 2)]
    for _ in range(args.samples):
        s = vt.sample(rng, args.length)
        seq = lookups(s.prompt.split())
        assert seq[-1] == s.answer and len(seq) == len(columns)
        prompts.append(tok.encode(s.prompt).ids)
        for column, word in zip(columns, seq, strict=True):
            column.append(tok.token_to_id(word))
    x = features(model, prompts)
    train = args.samples * 3 // 4
    targets = [classes(t) for t in columns]
    base = max(torch.bincount(y[train:]).max().item() for y in targets)
    hops = "one-hop" if args.hops == 1 else f"{args.hops}-hop"
    print(f"{args.model}: {args.samples} {hops} vt prompts of ~{args.length} tokens, "
          f"probe fit on {train}, held-out accuracy (majority class at most "
          f"{base / (args.samples - train):.3f})")  # fmt: skip
    names = ["xB (the name)", "xA (first lookup)"] if args.hops == 1 else [
        "the name", *(f"lookup {k}" for k in range(1, args.hops + 1))]  # fmt: skip
    names.append("d (answer)")
    print(" | ".join(["layer", *names]))
    for layer in range(x.shape[0]):
        accs = [probe_accuracy(x[layer], y, train) for y in targets]
        cells = [f"{a:>{len(n)}.3f}" for a, n in zip(accs, names, strict=True)]
        print(" | ".join([f"{layer:>5}", *cells]))


if __name__ == "__main__":
    main()
