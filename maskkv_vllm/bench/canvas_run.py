"""``python -m maskkv_vllm.bench.canvas_run``: only the canvas-cache rows of
``maskkv bench`` (``bench/canvas.py``), with its model, prompts and sizes."""

from __future__ import annotations

import argparse
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
    p.add_argument("--skip-canvas", action="store_true", help="only the peer lane")
    args = p.parse_args(argv)
    cfg = suite.QUICK if args.quick else suite.BenchConfig()
    lens = [*cfg.canvas_prompt_lens, *(args.peer_lens if args.peer_fast_dllm else [])]
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
        if not args.skip_canvas:
            rows = canvas.canvas_step_time(
                figures.sampler_for(model, tok, "paged", cfg.pool), tok,
                cfg.canvas_prompt_lens, cfg.canvas_shapes, cfg.budget, cfg.device,
                args.repeats,
            )  # fmt: skip
            result["rows"] = rows
            lines += canvas.report(rows)
            lines += [
                f"  {w}: {v:.2f} (target {t})" for w, v, t in canvas.targets(rows)
            ]
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


if __name__ == "__main__":
    main()
