"""Where the sampler loses an answer the first forward had (issue 26): each answer
slot's commit step, confidence and change, step by step.

    OMP_NUM_THREADS=1 python benchmarks/sampler_trace.py --model M \\
        --prompt-tokens 2048 --samples 32 [--task kv]

``train_model``'s checks score two things on the same held-out prompts: ``exact``,
one argmax over the all-masked canvas, and ``answer``, LLaDA's sampler as ``maskkv
eval`` runs it (one block, one slot committed a step, the most confident masked one,
temperature 0). This replays that sampler one forward at a time and records,
per prompt, which slot each step commits, its confidence, and whether the
committed token is the first forward's argmax. Summed per slot, it says which
slots change after the first step and how sure the model was of them. Beside it,
one forward with the answer's EOS padding given, then with one word slot's true
word given as well: how each given slot moves the other words' lookup.

``--cache prompt`` (default) keeps the prompt's K/V from the first forward, as the
engine's prompt cache does for ``maskkv eval``: later steps recompute the canvas
(and, for Dream, the last prompt token's query) against them. ``--cache none``
recomputes the whole sequence every step, as LLaDA's ``generate.py``; with more
than one layer the prompt's K/V then follow the committed canvas, so the two can
answer differently.
"""

from __future__ import annotations

import argparse
import random
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
import train_model as tm  # noqa: E402

from maskkv_vllm.evaluation.synthetic import word_tokenizer  # noqa: E402
from maskkv_vllm.models.attention import dense_attention  # noqa: E402
from maskkv_vllm.models.builtin import resolve_model  # noqa: E402
from maskkv_vllm.models.loader import load_model  # noqa: E402

CACHES = ("prompt", "none")


@dataclass(frozen=True)
class Trace:
    """One prompt's sampler run.

    first: the first forward's argmax per slot (``train_model``'s one-shot answer);
    final: the canvas after the last step; order: the slot each step committed;
    confidence: its probability when committed, per step.
    """

    first: list[int]
    final: list[int]
    order: list[int]
    confidence: list[float]


class KeptPromptKV:
    """Dense attention over one unpadded row whose prompt K/V are the first
    forward's: the first call per layer keeps k, v[:, :, :width]; later calls put
    them in place of the fresh ones (the engine's prompt cache)."""

    def __init__(self, width: int) -> None:
        self.width = width
        self.kept: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    def __call__(self, layer, q, k, v):
        """q: (1, Hq, T, d); k, v: (1, Hkv, T, d)."""
        w = self.width
        if layer not in self.kept:
            self.kept[layer] = (k[:, :, :w], v[:, :, :w])
        pk, pv = self.kept[layer]
        k = torch.cat([pk, k[:, :, w:]], dim=2)
        v = torch.cat([pv, v[:, :, w:]], dim=2)
        return dense_attention(q, k, v, None)


def recompute_all(layer, q, k, v):
    """Dense attention over one unpadded row, nothing kept (``generate.py``)."""
    return dense_attention(q, k, v, None)


@torch.no_grad()
def trace(model, prompt: list[int], gen_length: int, cache: str = "prompt") -> Trace:
    """LLaDA's sampler (one block of ``gen_length``, ``gen_length`` steps,
    low-confidence remasking, temperature 0) on one prompt, a forward a step.

    Slot j is read from output j (LLaDA) or j - 1 (Dream's shifted logits).
    ``cache``: "prompt" (the first forward's prompt K/V kept) or "none"."""
    if cache not in CACHES:
        raise ValueError(f"cache={cache!r} is not one of {CACHES}")
    config = model.config
    ids = torch.tensor([prompt + [config.mask_token_id] * gen_length])
    width = len(prompt)
    positions = torch.arange(ids.shape[1])[None]
    attention = KeptPromptKV(width) if cache == "prompt" else recompute_all
    start = width - tm.shift_of(config)
    first, order, confidence = None, [], []
    for _ in range(gen_length):
        hidden = model(ids, positions, attention)[0, start : start + gen_length]
        conf, best = model.logits(hidden).float().softmax(-1).max(-1)
        first = best.tolist() if first is None else first
        masked = ids[0, width:] == config.mask_token_id
        slot = int(torch.where(masked, conf, -1.0).argmax())
        ids[0, width + slot] = best[slot]
        order.append(slot)
        confidence.append(float(conf[slot]))
    return Trace(first, ids[0, width:].tolist(), order, confidence)


def upto_eos(tokens: list[int], eos: int) -> list[int]:
    """The answer as ``maskkv eval`` scores it: up to its first EOS."""
    return tokens[: tokens.index(eos)] if eos in tokens else tokens


@torch.no_grad()
def argmax_given(model, prompt: list[int], canvas: list[int]) -> list[int]:
    """One forward over ``prompt`` + ``canvas`` (the mask id where a slot is
    open): each slot's argmax, the given ones included."""
    ids = torch.tensor([prompt + canvas])
    positions = torch.arange(ids.shape[1])[None]
    start = len(prompt) - tm.shift_of(model.config)
    hidden = model(ids, positions, recompute_all)[0, start : start + len(canvas)]
    return model.logits(hidden).argmax(-1).tolist()


def eos_given(want: list[int], mask: int, eos: int) -> list[int]:
    """The canvas with the answer's EOS padding in place and its words masked."""
    return [t if t == eos else mask for t in want]


def word_accuracy(
    model, samples: list[tuple[list[int], list[int]]], keep: int | None = None
) -> list[float | None]:
    """One forward per (prompt, answer) of ``samples`` with the answer's EOS
    padding given (and slot ``keep``'s true word, when given), the other words
    masked: how often each word slot's argmax is right (None for ``keep``), over
    the answers with a word there. Word slots are the first answer's."""
    config = model.config
    eos, mask = config.eos_token_id, config.mask_token_id
    words = [j for j, t in enumerate(samples[0][1]) if t != eos]
    hits: dict[int, list[bool]] = {j: [] for j in words if j != keep}
    for prompt, want in samples:
        canvas = eos_given(want, mask, eos)
        if keep is not None:
            canvas[keep] = want[keep]
        got = argmax_given(model, prompt, canvas)
        for j, row in hits.items():
            if want[j] != eos:
                row.append(got[j] == want[j])
    return [None if j == keep else sum(hits[j]) / max(1, len(hits[j])) for j in words]


def summarise(traces: list[Trace], wants: list[list[int]], eos: int) -> dict:
    """Counts over prompts (``one_shot``: the whole first argmax right, EOS padding
    included, as ``train_model``'s ``exact``; ``sampler``: the answer up to its
    first EOS right, as its ``answer``), and per slot: mean commit step, mean
    confidence at commit, how often the committed token differs from the first
    argmax, and how often the first argmax and the committed token are right."""
    n, g = len(traces), len(wants[0])
    pairs_tw = list(zip(traces, wants, strict=True))
    one_shot = [t.first == w for t, w in pairs_tw]
    sampled = [upto_eos(t.final, eos) == upto_eos(w, eos) for t, w in pairs_tw]
    slots = []
    for j in range(g):
        steps = [t.order.index(j) for t in traces]
        conf = [t.confidence[s] for t, s in zip(traces, steps, strict=True)]
        slots.append({
            "step": sum(steps) / n,
            "confidence": sum(conf) / n,
            "changed": sum(t.final[j] != t.first[j] for t in traces) / n,
            "first_right": sum(t.first[j] == w[j] for t, w in pairs_tw) / n,
            "right": sum(t.final[j] == w[j] for t, w in pairs_tw) / n,
        })  # fmt: skip
    pairs = list(zip(one_shot, sampled, strict=True))
    return {
        "one_shot": sum(one_shot),
        "sampler": sum(sampled),
        "one_shot_only": pairs.count((True, False)),
        "sampler_only": pairs.count((False, True)),
        "slots": slots,
    }


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="retrieval")
    ap.add_argument("--prompt-tokens", type=int, default=1024)
    ap.add_argument("--samples", type=int, default=32)
    ap.add_argument("--task", default="kv", choices=["kv", "needle"])
    ap.add_argument("--cache", default="prompt", choices=CACHES)
    args = ap.parse_args(argv)
    model = load_model(resolve_model(args.model)).float().eval()
    tok, length = word_tokenizer(), args.prompt_tokens
    rng = random.Random(tm.EVAL_SEED + length + tm.TASK_SEED[args.task])
    samples = [tm.prompt_targets(rng, tok, args.task, length, 0)[:2]
               for _ in range(args.samples)]  # fmt: skip
    gen = len(samples[0][1])
    traces = [trace(model, p, gen, args.cache) for p, _ in samples]
    got = summarise(traces, [w for _, w in samples], model.config.eos_token_id)
    print(f"{type(model).__name__}, {args.samples} held-out {args.task} prompts of "
          f"~{length} tokens, {gen} answer slots, a slot a step, "
          f"cache {args.cache}:")  # fmt: skip
    print(
        f"  right: one-shot argmax {got['one_shot']}, sampler {got['sampler']}; "
        f"one-shot only {got['one_shot_only']}, sampler only {got['sampler_only']}"
    )
    words = [j for j, t in enumerate(samples[0][1]) if t != model.config.eos_token_id]
    for keep in [None, *words]:
        right = word_accuracy(model, samples, keep)
        shown = ", ".join("-" if r is None else f"{r:.2f}" for r in right)
        given = "" if keep is None else f" and word slot {keep}'s true word"
        print(f"  one forward with the answer's EOS slots{given} given, the other "
              f"words masked; right per word slot: {shown}")  # fmt: skip
    print(
        "  slot: mean commit step (0 = first), mean confidence at commit, "
        "changed from the first argmax, right at first -> at the end"
    )
    for j, s in enumerate(got["slots"]):
        print(
            f"  {j}: step {s['step']:.2f}, confidence {s['confidence']:.2f}, "
            f"changed {s['changed']:.2f}, right {s['first_right']:.2f} -> "
            f"{s['right']:.2f}"
        )


if __name__ == "__main__":
    main()
