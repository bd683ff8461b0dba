"""Which queries find the answer? The window-query probe of issue 26.

    OMP_NUM_THREADS=1 python benchmarks/window_probe.py --model retrieval \\
        --prompt-tokens 1024 --samples 32 [--out benchmarks/results/window_probe.json]

Held-out ``kv`` and ``needle`` prompts (``train_model``'s evaluation stream), the
answer canvas all masked, one forward: the first denoising step, where every policy
scores. Per layer, for each group of query rows, the attention share they give the
queried record's three answer digits: the mean over the group's rows of the
softmax mass (over all prompt + canvas keys) on those three columns, for the head
with the highest mean share, and the median over prompts of the worst digit's rank
among the prompt columns in that head's summed votes (1 = first). A uniform row gives
3 / (M + L). The groups are the voters of the policies:

- ``mask``: the canvas's mask queries (MaskKV's voters);
- ``window``: the last 32 prompt queries (SnapKV's observation window);
- ``query``: the prompt's last token, the key being asked for;
- ``window+mask``: the last 32 queries of the whole input (``snapkv-mask-window``);
- ``readers``: the rows whose outputs are read for the canvas's tokens. LLaDA reads
  slot j from its own row, so these are the mask queries again; a shifted model
  (Dream) reads slot j from row j - 1, so its first reader is the query token,
  whose output predicts the answer's first token as in an autoregressive LLM.

If only ``mask`` finds the digits, mask voting is close to an oracle on this model
and a window policy cannot compete; a model whose prompt tokens retrieve (a
pretrained LLM) shows the digits to ``window`` and ``query`` too.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
import train_model as tm  # noqa: E402

from maskkv_vllm.evaluation.synthetic import word_tokenizer  # noqa: E402
from maskkv_vllm.eviction.voting import column_attention_sums  # noqa: E402
from maskkv_vllm.models.attention import DenseAttention  # noqa: E402
from maskkv_vllm.models.builtin import resolve_model  # noqa: E402
from maskkv_vllm.models.loader import load_model  # noqa: E402

WINDOW = 32
GROUPS = ("mask", "window", "query", "window+mask", "readers")


class Recording(DenseAttention):
    """Dense attention that keeps each layer's post-RoPE q (Hq, T, d), k (Hkv, T, d)
    of the one row it runs."""

    def __init__(self) -> None:
        super().__init__()
        self.qk: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    def __call__(self, layer, q, k, v):
        self.qk[layer] = (q[0], k[0])
        return super().__call__(layer, q, k, v)


def answer_columns(prompt: list[int]) -> list[int]:
    """Prompt positions of the queried record's three digits (``kNNN : d d d``)."""
    key = prompt[-1]
    at = next(j for j, t in enumerate(prompt[:-2]) if t == key)
    return [at + 2, at + 3, at + 4]


def voter_rows(group: str, m: int, length: int, shift: int = 0) -> slice:
    """Query rows of ``group`` in a (prompt M, canvas L) row; ``shift`` is 1 for a
    model that reads the token at i from output i - 1 (Dream)."""
    return {
        "mask": slice(m, m + length),
        "window": slice(m - WINDOW, m),
        "query": slice(m - 1, m),
        "window+mask": slice(m + length - WINDOW, m + length),
        "readers": slice(m - shift, m + length - shift),
    }[group]


@torch.no_grad()
def record(model, prompt: list[int]) -> dict[int, tuple[torch.Tensor, torch.Tensor]]:
    """Each layer's post-RoPE q, k of the prompt followed by an all-masked canvas."""
    m, length = len(prompt), tm.GEN_LENGTH
    ids = torch.tensor([prompt + [model.config.mask_token_id] * length])
    rec = Recording()
    model(ids, torch.arange(m + length)[None], rec)
    return rec.qk


def record_columns(prompt: list[int]) -> list[int]:
    """Prompt positions of the queried record, ``kNNN : d d d ;`` (6 columns)."""
    at = answer_columns(prompt)[0] - 2
    return list(range(at, at + 6))


def statement_at(prompt: list[int], name: int, eq: int) -> int:
    """Where the statement ``name = ... ;`` starts (the name's first use as a
    left-hand side)."""
    return next(j for j in range(len(prompt) - 3) if prompt[j : j + 2] == [name, eq])


def vt_spans(prompt: list[int], eq: int) -> dict[str, list[int]]:
    """A ``vt`` prompt's two first lookups: ``hop1``, the queried name's statement
    ``xB = xA ;`` (4 columns), and ``hop2``, the statement ``xA = ... ;`` its
    right-hand side names."""
    first = statement_at(prompt, prompt[-1], eq)
    second = statement_at(prompt, prompt[first + 2], eq)
    return {
        "hop1": list(range(first, first + 4)),
        "hop2": list(range(second, second + 4)),
    }


def spans_of(task: str, prompt: list[int], eq: int) -> dict[str, list[int]]:
    """The prompt columns a task's answer is looked up from, by name."""
    return vt_spans(prompt, eq) if task == "vt" else {"record": record_columns(prompt)}


@torch.no_grad()
def span_shares(model, prompt: list[int], spans: dict[str, list[int]]) -> dict:
    """Per layer and group: per head, the share of the group's attention on the
    canvas (its mask tokens) and on each of ``spans`` (the queried record's 6
    columns for kv and needle, ``vt_spans`` for vt), for one prompt.

    A prompt query can read the answer off the mask tokens, which retrieve, and so
    need no record of its own; or it can find the record by a column beside the
    digits (its closing ``;`` carries them after block 0's local prior), which
    SnapKV's pooling (kernel 7) would keep with the digits.
    """
    m, length, shift = len(prompt), tm.GEN_LENGTH, tm.shift_of(model.config)
    out = {}
    for layer, (q, k) in sorted(record(model, prompt).items()):
        out[layer] = {}
        for group in GROUPS:
            rows = q[:, voter_rows(group, m, length, shift)]
            votes = column_attention_sums(rows, k, m) / rows.shape[1]  # (Hq, M)
            out[layer][group] = {"canvas": (1 - votes.sum(dim=1)).tolist()} | {
                name: votes[:, cols].sum(dim=1).tolist() for name, cols in spans.items()
            }
    return out


@torch.no_grad()
def probe_prompt(model, prompt: list[int]) -> dict:
    """Per layer and group: per head (share, worst digit rank) for one prompt."""
    m, length = len(prompt), tm.GEN_LENGTH
    cols, shift = answer_columns(prompt), tm.shift_of(model.config)
    out = {}
    for layer, (q, k) in sorted(record(model, prompt).items()):
        out[layer] = {}
        for group in GROUPS:
            rows = q[:, voter_rows(group, m, length, shift)]
            votes = column_attention_sums(rows, k, m)  # (Hq, M)
            share = votes[:, cols].sum(dim=1) / rows.shape[1]
            rank = (votes[:, None, :] > votes[:, cols, None]).sum(-1).max(-1).values
            worst = (rank + 1).tolist()
            out[layer][group] = list(zip(share.tolist(), worst, strict=True))
    return out


def summarise(per_prompt: list[dict]) -> dict:
    """Per layer and group: the best head by mean share, its mean share and the
    median of its worst-digit rank."""
    out = {}
    for layer in per_prompt[0]:
        out[layer] = {}
        for group in GROUPS:
            heads = zip(*(p[layer][group] for p in per_prompt), strict=True)
            stats = [
                (statistics.fmean(s for s, _ in h), statistics.median(r for _, r in h))
                for h in heads
            ]
            best = max(range(len(stats)), key=lambda i: stats[i][0])
            out[layer][group] = {
                "head": best,
                "share": stats[best][0],
                "worst_digit_rank": stats[best][1],
            }
    return out


def summarise_spans(per_prompt: list[dict]) -> dict:
    """Per layer, span ("canvas" and the task's spans) and group: the head whose
    mean share is highest, and that share."""
    out = {}
    for layer in per_prompt[0]:
        out[layer] = {span: {} for span in per_prompt[0][layer][GROUPS[0]]}
        for group in GROUPS:
            for span, cells in out[layer].items():
                shares = [p[layer][group][span] for p in per_prompt]
                means = torch.tensor(shares).mean(0)  # per head
                cells[group] = {
                    "head": int(means.argmax()),
                    "share": float(means.max()),
                }
    return out


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="retrieval")
    ap.add_argument("--prompt-tokens", type=int, default=1024)
    ap.add_argument("--samples", type=int, default=32, help="prompts per task")
    ap.add_argument("--tasks", nargs="+", default=["kv", "needle"],
                    choices=["kv", "needle", "vt"])  # fmt: skip
    ap.add_argument("--vt-hops", type=int, nargs="+", default=list(tm.VT_HOPS),
                    help="hop counts of the vt prompts")  # fmt: skip
    ap.add_argument("--out", type=Path, default=None, help="also write JSON here")
    args = ap.parse_args(argv)
    model = load_model(resolve_model(args.model)).float().eval()
    tok, n = word_tokenizer(), args.prompt_tokens
    eq = tok.token_to_id("=")
    shift = tm.shift_of(model.config)
    report = {"model": args.model, "model_type": type(model).__name__,
              "shifted_logits": bool(shift), "prompt_tokens": n,
              "samples": args.samples}  # fmt: skip
    print(f"{type(model).__name__}, logits shifted: {bool(shift)}")
    vt = tm.VtPrompts(tuple(args.vt_hops))
    for task in args.tasks:
        rng = random.Random(tm.EVAL_SEED + n + tm.TASK_SEED[task])
        prompts = [tm.prompt_targets(rng, tok, task, n, 0, vt=vt)[0]
                   for _ in range(args.samples)]  # fmt: skip
        m = statistics.fmean(len(p) for p in prompts)
        report[task] = {"prompt_len": m}
        if task != "vt":  # the digit probe: an answer copied from one record
            report[task] |= digit_report(model, task, prompts, m, args.samples)
        spans = summarise_spans(
            [span_shares(model, p, spans_of(task, p, eq)) for p in prompts]
        )
        report[task]["span_shares"] = spans
        what = ("the queried name's statement (hop1) and the one its right-hand side "
                f"names (hop2), hops {args.vt_hops}" if task == "vt"
                else "the queried record's 6 columns (key : d d d ;)")  # fmt: skip
        print(f"{task}: share of attention on the canvas's {tm.GEN_LENGTH} mask "
              f"tokens, and on {what} (uniform {6 / (m + tm.GEN_LENGTH):.4f} for 6 "
              f"columns, {4 / (m + tm.GEN_LENGTH):.4f} for 4), the head with the "
              "most:")  # fmt: skip
        for layer, by_span in spans.items():
            for span, groups in by_span.items():
                cells = [f"{g} {s['share']:.3f} (h{s['head']})"
                         for g, s in groups.items()]  # fmt: skip
                print(f"  layer {layer} {span}: " + "; ".join(cells))
    if args.out:
        args.out.write_text(json.dumps(report, indent=2) + "\n")
    return report


def digit_report(model, task: str, prompts: list[list[int]], m: float, n: int) -> dict:
    """The share of each group's attention on the answer's 3 digits, printed."""
    summary = summarise([probe_prompt(model, p) for p in prompts])
    uniform = 3 / (m + tm.GEN_LENGTH)
    print(f"{task}: {n} held-out prompts of ~{m:.0f} tokens, canvas "
          f"{tm.GEN_LENGTH} masks; share of attention on the answer's 3 digits "
          f"(best head; uniform {uniform:.4f}), median worst-digit rank "
          f"of {m:.0f}:")  # fmt: skip
    for layer, groups in summary.items():
        cells = [
            f"{g} {s['share']:.3f} (h{s['head']}, rank {s['worst_digit_rank']:g})"
            for g, s in groups.items()
        ]
        print(f"  layer {layer}: " + "; ".join(cells))
    return {"uniform_share": uniform, "layers": summary}


if __name__ == "__main__":
    main()
