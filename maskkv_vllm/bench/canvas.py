"""The canvas cache in ``maskkv bench``: steps with ``dual`` and ``adaptive``
against ``none``.

Per (gen, block) shape and prompt length, six labels run in lockstep: the full
cache and MaskKV, each with ``canvas_cache`` none, dual and adaptive (its
defaults: a refresh every 5 steps, a quarter of the rows between). Both caches
give bimodal steps (a canvas forward at each block boundary or refresh, cheaper
steps between), so the figure is the MEAN step after the first (the prefill),
not the median.
"""

from __future__ import annotations

import statistics

from maskkv_vllm.bench.common import english_ids, lockstep_times, step_times
from maskkv_vllm.sampling_params import SamplingParams
from maskkv_vllm.worker.model_runner import ModelRunner

CACHES = ("dual", "adaptive")
"""The canvas caches measured against ``none``."""
LABELS = tuple(
    (f"{policy}_{cache}", policy, cache)
    for policy in ("full", "maskkv")
    for cache in ("none", *CACHES)
)
"""(label, policy, canvas cache)."""


def shape_params(gen: int, block: int, policy: str, budget: int, canvas: str):
    return SamplingParams(
        gen_length=gen, block_length=block, steps=gen, kv_policy=policy,
        kv_budget=None if policy == "full" else budget, canvas_cache=canvas,
    )  # fmt: skip


def canvas_step_time(
    sampler: ModelRunner, tok, lengths, shapes, budget, device, repeats=1
) -> list[dict]:
    """Mean ms of a step after the first, and of the whole generation, per shape,
    prompt length and label (each label keeps its best of ``repeats`` rounds),
    plus the share of dual's answer tokens equal to none's (greedy).

    Args:
        sampler: a paged ``ModelRunner`` (early stop off) that every label uses.
        shapes: (gen_length, block_length) pairs.
    """
    rows = []
    for gen, block in shapes:
        sp = {label: shape_params(gen, block, policy, budget, canvas)
              for label, policy, canvas in LABELS}  # fmt: skip
        for label in sp:  # warm-up
            step_times(sampler, sampler.make_sequence(0, [5] * 16, sp[label]), device)
        for m in lengths:
            rows.append(_row(sampler, tok, m, gen, block, sp, device, repeats))
    return rows


def _row(sampler, tok, m, gen, block, sp, device, repeats) -> dict:
    prompt = english_ids(tok, m)
    samplers = dict.fromkeys(sp, sampler)
    best: dict[str, tuple[float, float]] = {}
    for _ in range(repeats):
        seqs = {label: sampler.make_sequence(i, prompt, sp[label])
                for i, label in enumerate(sp)}  # fmt: skip
        for label, times in lockstep_times(samplers, seqs, device).items():
            got = (1e3 * statistics.mean(times[1:]), 1e3 * sum(times))
            best[label] = min(best.get(label, got), got)
        canvases = {label: s.canvas.tolist() for label, s in seqs.items()}
    row = {"prompt_len": m, "gen": gen, "block": block}
    for label in sp:
        row[f"{label}_step_ms"], row[f"{label}_total_ms"] = best[label]
    for policy in ("full", "maskkv"):
        none = canvases[f"{policy}_none"]
        for cache in CACHES:
            other = canvases[f"{policy}_{cache}"]
            key = (
                f"{policy}_agreement"
                if cache == "dual"
                else f"{policy}_{cache}_agreement"
            )
            row[key] = sum(a == b for a, b in zip(none, other, strict=True)) / len(none)
    return row


def refresh_agreement(sampler, tok, lengths, shapes, device) -> list[dict]:
    """Share of plain ``dual``'s greedy answer tokens equal to ``dual_refresh``'s,
    full cache. ``dual_refresh`` (the prompt recomputed at each block boundary) is
    Fast-dLLM's schedule and gives their tokens (the peer lane), so it is the
    oracle plain ``dual`` is measured against.

    Args:
        sampler: a paged ``ModelRunner``.
        shapes: (gen_length, block_length) pairs.
    """
    rows = []
    for gen, block in shapes:
        for m in lengths:
            prompt = english_ids(tok, m)
            canvases = []
            for cache in ("dual", "dual_refresh"):
                sp = shape_params(gen, block, "full", 0, cache)
                seq = sampler.make_sequence(0, prompt, sp)
                step_times(sampler, seq, device)
                canvases.append(seq.canvas.tolist())
            same = sum(a == b for a, b in zip(*canvases, strict=True))
            rows.append({"prompt_len": m, "gen": gen, "block": block,
                         "dual_vs_refresh": same / gen})  # fmt: skip
    return rows


def refresh_report(rows: list[dict]) -> list[str]:
    lines = ["plain dual vs dual_refresh (Fast-dLLM's schedule), full cache, greedy: "
             "share of equal answer tokens"]  # fmt: skip
    for r in rows:
        lines.append(f"  gen {r['gen']} / block {r['block']}, prompt "
                     f"{r['prompt_len']}: {r['dual_vs_refresh']:.2f}")  # fmt: skip
    return lines


def targets(rows: list[dict]) -> list[tuple[str, float, str]]:
    """(what, measured, target): a dual step <= 1/4 of a none step at the
    longest canvas shape, worst prompt length, full cache and MaskKV."""
    gen = max(r["gen"] for r in rows)
    mine = [r for r in rows if r["gen"] == gen]
    out = []
    for policy in ("full", "maskkv"):
        worst = max(r[f"{policy}_dual_step_ms"] / r[f"{policy}_none_step_ms"]
                    for r in mine)  # fmt: skip
        out.append((f"{policy} cache: dual step / none step at gen {gen} / block "
                    f"{mine[0]['block']}, worst length", worst, "<= 0.25"))  # fmt: skip
    return out


def report(rows: list[dict]) -> list[str]:
    lines = [
        "canvas cache (mean ms of the steps after the first; dual/none ratio; "
        "share of dual's tokens equal to none's, greedy, random weights):",
        f"{'gen/blk':>7} | {'prompt':>6} | {'full none':>9} | {'full dual':>9} | "
        f"{'ratio':>5} | {'agree':>5} | {'maskkv none':>11} | {'maskkv dual':>11} | "
        f"{'ratio':>5} | {'agree':>5}",
    ]
    for r in rows:
        cells = [f"{r['gen']}/{r['block']}".rjust(7), f"{r['prompt_len']:>6}"]
        for policy, width in (("full", 9), ("maskkv", 11)):
            none, dual = r[f"{policy}_none_step_ms"], r[f"{policy}_dual_step_ms"]
            agree = r[f"{policy}_agreement"]
            cells += [f"{none:>{width}.2f}", f"{dual:>{width}.2f}",
                      f"{dual / none:>5.2f}", f"{agree:>5.2f}"]  # fmt: skip
        lines.append(" | ".join(cells))
    if rows and "full_adaptive_step_ms" in rows[0]:
        lines += adaptive_report(rows)
    return lines


def adaptive_report(rows: list[dict]) -> list[str]:
    """The adaptive canvas cache's lines: its mean step, adaptive / none, and
    its share of tokens equal to none's."""
    lines = [
        "adaptive canvas cache (refresh every 5 steps, 1/4 of the rows between):",
        f"{'gen/blk':>7} | {'prompt':>6} | {'full adapt':>10} | {'ratio':>5} | "
        f"{'agree':>5} | {'maskkv adapt':>12} | {'ratio':>5} | {'agree':>5}",
    ]
    for r in rows:
        cells = [f"{r['gen']}/{r['block']}".rjust(7), f"{r['prompt_len']:>6}"]
        for policy, width in (("full", 10), ("maskkv", 12)):
            ms = r[f"{policy}_adaptive_step_ms"]
            ratio = ms / r[f"{policy}_none_step_ms"]
            agree = r[f"{policy}_adaptive_agreement"]
            cells += [f"{ms:>{width}.2f}", f"{ratio:>5.2f}", f"{agree:>5.2f}"]
        lines.append(" | ".join(cells))
    return lines


def plot(rows: list[dict], path) -> None:
    """ms per step against prompt length, one panel per (gen, block) shape, a line
    per label (full cache and MaskKV, each with none, dual and adaptive)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    shapes = sorted({(r["gen"], r["block"]) for r in rows}, reverse=True)
    fig, axes = plt.subplots(1, len(shapes), figsize=(6 * len(shapes), 4.2))
    for ax, (gen, block) in zip(
        axes if len(shapes) > 1 else [axes], shapes, strict=True
    ):
        mine = sorted(
            (r for r in rows if (r["gen"], r["block"]) == (gen, block)),
            key=lambda r: r["prompt_len"],
        )
        for label, policy, _ in LABELS:
            key = f"{label}_step_ms"
            pts = [(r["prompt_len"], r[key]) for r in mine if key in r]
            style = "-" if policy == "full" else "--"
            ax.plot(*zip(*pts, strict=True), style, marker="o", label=label)
        ax.set(xscale="log", yscale="log", xlabel="prompt tokens",
               ylabel="ms / step (mean after the first)",
               title=f"canvas cache, gen {gen} / block {block}")  # fmt: skip
        lengths = sorted({r["prompt_len"] for r in mine})
        ax.set_xticks(lengths, [str(m) for m in lengths])
        ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
