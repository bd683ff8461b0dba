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
    args = p.parse_args(argv)
    cfg = suite.QUICK if args.quick else suite.BenchConfig()
    longest = max(cfg.canvas_prompt_lens) + max(g for g, _ in cfg.canvas_shapes)
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = bench_checkpoint(cfg.model, longest + 64, tmp)
        model, tok = load_checkpoint(ckpt, "float32", cfg.device)
    sampler = figures.sampler_for(model, tok, "paged", cfg.pool)
    rows = canvas.canvas_step_time(
        sampler, tok, cfg.canvas_prompt_lens, cfg.canvas_shapes, cfg.budget,
        cfg.device, args.repeats,
    )  # fmt: skip
    threads = torch.get_num_threads()
    machine = (f"{platform.processor() or platform.machine()}, {threads} torch "
               f"threads, torch {torch.__version__}")  # fmt: skip
    lines = [f"{time.strftime('%Y-%m-%d')}, {machine}; model {cfg.model}, "
             f"MaskKV B={cfg.budget}", *canvas.report(rows)]  # fmt: skip
    lines += [f"  {w}: {v:.2f} (target {t})" for w, v, t in canvas.targets(rows)]
    print("\n".join(lines))
    if args.out:
        args.out.write_text(json.dumps({"machine": machine, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
