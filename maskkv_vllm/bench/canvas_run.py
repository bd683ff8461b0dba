"""``python -m maskkv_vllm.bench.canvas_run``: only the canvas-cache rows of
``maskkv bench`` (``bench/canvas.py``), with its model, prompts and sizes."""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import tempfile
import time
from pathlib import Path

import torch

from maskkv_vllm.bench import canvas, figures, suite
from maskkv_vllm.bench.common import bench_checkpoint
from maskkv_vllm.models.loader import load_checkpoint


def main(argv: list[str] | None = None) -> None:
    """Only the canvas-cache rows of ``maskkv bench`` (its model, prompts,
    sizes), printed and saved as JSON."""
    p = argparse.ArgumentParser(description=main.__doc__)
    p.add_argument("--quick", action="store_true", help="the tiny CI sizes")
    p.add_argument("--repeats", type=int, default=2, help="lockstep rounds")
    p.add_argument("--out", type=Path, help="JSON file to write")
    p.add_argument(
        "--peer-fast-dllm", metavar="PATH",
        help="a Fast-dLLM checkout: also run the peer lane (their dual cache "
             "beside ours) at --peer-lens",
    )  # fmt: skip
    p.add_argument("--peer-lens", type=int, nargs="+", default=[256, 1024, 4096])
    p.add_argument(
        "--prompt-lens", type=int, nargs="+",
        help="prompt lengths of the step-time rows (default: maskkv bench's)",
    )  # fmt: skip
    p.add_argument(
        "--pool", help="the step-time rows' page pool (default: maskkv bench's; "
        "the six labels hold three full prompts at once)",
    )  # fmt: skip
    p.add_argument("--skip-canvas", action="store_true", help="no step-time rows")
    p.add_argument(
        "--from", dest="sources", type=Path, nargs="+",
        help="measure nothing: report and plot the rows of these earlier --out files",
    )  # fmt: skip
    p.add_argument("--plot", type=Path, help="PNG of the step-time rows")
    p.add_argument(
        "--refresh-agreement", action="store_true",
        help="also plain dual's tokens against dual_refresh's (the oracle)",
    )  # fmt: skip
    p.add_argument(
        "--decode-heavy", action="store_true",
        help="also the engine's decode-heavy workload: full + none, MaskKV + none, "
             "MaskKV + dual (tokens/s)",
    )  # fmt: skip
    args = p.parse_args(argv)
    if args.sources:
        return report_saved(args.sources, args.out, args.plot)
    cfg = suite.QUICK if args.quick else suite.BenchConfig()
    if args.prompt_lens:
        cfg = dataclasses.replace(cfg, canvas_prompt_lens=tuple(args.prompt_lens))
    if args.pool:
        cfg = dataclasses.replace(cfg, pool=args.pool)
    lens = [*cfg.canvas_prompt_lens, *(args.peer_lens if args.peer_fast_dllm else [])]
    if args.decode_heavy:
        lens.append(cfg.decode_prompt)
    longest = max(lens) + max(g for g, _ in cfg.canvas_shapes)
    threads = torch.get_num_threads()
    machine = (f"{platform.processor() or platform.machine()}, {threads} torch "
               f"threads, torch {torch.__version__}")  # fmt: skip
    lines = [f"{time.strftime('%Y-%m-%d')}, {machine}; model {cfg.model}, "
             f"MaskKV B={cfg.budget}"]  # fmt: skip
    result: dict = {"machine": machine}
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = bench_checkpoint(cfg.model, longest + 64, tmp)
        model, tok = load_checkpoint(ckpt, "float32", cfg.device)
        # one cfg.pool-sized pool for the step-time rows and the agreement,
        # released before the workloads that build their own
        steps = not args.skip_canvas or args.refresh_agreement
        sampler = figures.sampler_for(model, tok, "paged", cfg.pool) if steps else None
        if not args.skip_canvas:
            rows = canvas.canvas_step_time(
                sampler, tok,
                cfg.canvas_prompt_lens, cfg.canvas_shapes, cfg.budget, cfg.device,
                args.repeats,
            )  # fmt: skip
            result["rows"] = rows
            lines += canvas.report(rows)
            lines += [
                f"  {w}: {v:.2f} (target {t})" for w, v, t in canvas.targets(rows)
            ]
        if args.refresh_agreement:
            agree = canvas.refresh_agreement(
                sampler, tok,
                cfg.canvas_prompt_lens, cfg.canvas_shapes, cfg.device,
            )  # fmt: skip
            result["refresh_agreement"] = agree
            lines += ["", *canvas.refresh_report(agree)]
        del sampler
        if args.decode_heavy:
            d = figures.throughput(
                model, tok, cfg.decode_requests, cfg.decode_prompt, cfg.decode_gen,
                cfg.budget, cfg.decode_pool, cfg.decode_block, dual=True,
            )  # fmt: skip
            result["decode_heavy"] = d
            lines += ["", *decode_lines(cfg, d)]
        if args.peer_fast_dllm:
            peer = {"path": args.peer_fast_dllm, "commit": suite._commit_of(
                args.peer_fast_dllm), "rows": figures.peer_fast_dllm(
                model, tok, ckpt, args.peer_fast_dllm, args.peer_lens,
                cfg.gen_length, cfg.budget, cfg.device, cfg.pool)}  # fmt: skip
            result["peer_fast_dllm"] = peer
            lines += ["", *suite.peer_report(peer, {"gen_length": cfg.gen_length})]
    print("\n".join(lines))
    if args.out:
        args.out.write_text(json.dumps(result, indent=2))
    if args.plot and "rows" in result:
        canvas.plot(result["rows"], args.plot)


def report_saved(sources: list[Path], out: Path | None, png: Path | None) -> None:
    """The step-time rows of earlier runs, in one table (and plot) by shape and
    prompt length; each row's ratios were measured within its own run."""
    rows = [r for src in sources for r in json.loads(src.read_text())["rows"]]
    rows.sort(key=lambda r: (-r["gen"], r["prompt_len"]))
    print("\n".join(canvas.report(rows)))
    if out:
        out.write_text(json.dumps({"sources": [str(s) for s in sources],
                                   "rows": rows}, indent=2))  # fmt: skip
    if png:
        canvas.plot(rows, png)


def decode_lines(cfg, d: dict) -> list[str]:
    """The decode-heavy workload's tokens/s per label and the two ratios."""
    lines = [
        f"engine, decode-heavy: {cfg.decode_requests} x ~{cfg.decode_prompt}-token "
        f"requests, gen {cfg.decode_gen} in blocks of {cfg.decode_block}, "
        f"{cfg.decode_pool} pool:"
    ]
    for label, v in d.items():
        lines.append(
            f"  {label}: {v['tokens_per_s']:.2f} tok/s, {v['seconds']:.0f} s "
            f"({v['prompt_step_seconds']:.0f} s in steps that forwarded a prompt; "
            f"{v['decode_tokens_per_s']:.2f} tok/s in the rest), "
            f"peak {v['peak_running']} running"
        )
    for key, what in (("tokens_per_s", "end to end"),
                      ("decode_tokens_per_s", "outside prompt steps")):  # fmt: skip
        dual = d["maskkv_dual"][key]
        lines.append(
            f"  {what}: MaskKV + dual / full + none: {dual / d['full'][key]:.2f}x; "
            f"MaskKV + dual / MaskKV + none: {dual / d['maskkv'][key]:.2f}x"
        )
    return lines


if __name__ == "__main__":
    main()
