"""``maskkv bench --model-shape dream-7b``: the Dream rows of the suite.

A random model of Dream-v0-Instruct-7B's layer shape (hidden 3584, 28 query
heads sharing 4 KV heads of 128, SwiGLU 18944, RoPE base 1e6) with a few of its
28 layers and the 262-token byte vocabulary. The vocabulary changes neither the
KV bytes nor the attention: only the embedding and the LM head, whose cost per
step is per canvas row, the same at every prompt length.

Rows, from the suite's own figures (``figures.py``, ``canvas.py``): KV bytes per
prompt token, full and MaskKV at B; the MaskKV step beside the full cache's
(both paged) over the prompt lengths; the MaskKV step of every length in
lockstep (is it flat?); the requests one pool admits, full vs MaskKV; the
canvas cache, ``none`` vs ``dual``.
"""

from __future__ import annotations

import dataclasses
import tempfile

import torch
from tqdm.auto import tqdm

from maskkv_vllm.bench import canvas, figures, suite
from maskkv_vllm.bench.common import ModelSize, bench_checkpoint
from maskkv_vllm.bench.suite import BenchConfig, write_text_files
from maskkv_vllm.models.loader import load_checkpoint

DREAM_7B_LAYERS = 28
"""Layers of the real Dream-v0-Instruct-7B; the benchmark model has a few."""

DREAM_7B = ModelSize(
    layers=2, heads=28, head_dim=128, kv_heads=4, intermediate=18944, arch="dream"
)
MODES = (("paged", "paged", "full"), ("maskkv", "paged", "maskkv"))
"""The full cache and MaskKV, both in the paged layout (``figures.MODES``)."""

FULL = BenchConfig(
    model=DREAM_7B,
    prompt_lens=(256, 1024, 4096),
    none_max_len=0,  # the vanilla mode (a prefill per step) is not run
    repeats=1,
    long_capacity_prompt=4096,
    canvas_prompt_lens=(1024,),
    canvas_shapes=((32, 8),),
)
QUICK = BenchConfig(
    model=ModelSize(layers=2, heads=4, head_dim=32, kv_heads=2, arch="dream"),
    prompt_lens=(64, 128),
    none_max_len=0,
    repeats=1,
    gen_length=8,
    budget=16,
    pool="16MiB",
    long_capacity_prompt=256,
    canvas_prompt_lens=(64,),
    canvas_shapes=((16, 4),),
)
USED = ("model", "prompt_lens", "repeats", "repeat_max_len", "gen_length",
        "budget", "pool", "long_capacity_prompt", "canvas_prompt_lens",
        "canvas_shapes", "device")  # fmt: skip
"""The ``BenchConfig`` fields these rows read (the JSON keeps only these)."""


def run(cfg: BenchConfig) -> dict:
    """Every Dream row at ``cfg``'s sizes, on one random checkpoint."""
    longest = max(*cfg.prompt_lens, cfg.long_capacity_prompt, *cfg.canvas_prompt_lens)
    canvas_len = max(cfg.gen_length, *(gen for gen, _ in cfg.canvas_shapes))
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = bench_checkpoint(cfg.model, longest + canvas_len + 64, tmp)
        model, tok = load_checkpoint(ckpt, "float32", cfg.device)
    r = suite.header({k: v for k, v in dataclasses.asdict(cfg).items() if k in USED})
    with tqdm(total=len(cfg.prompt_lens) * len(MODES) + 3, desc="dream") as bar:
        r["step_time"] = suite.step_rows(model, tok, cfg, bar, MODES)
        r["flat_step"] = figures.flat_step(
            model, tok, cfg.prompt_lens, cfg.gen_length, cfg.budget, cfg.device,
            cfg.pool,
        )  # fmt: skip
        bar.update(1)
        r["long_capacity"] = figures.long_capacity(
            model, tok, cfg.long_capacity_prompt, cfg.gen_length, cfg.budget, cfg.pool
        )
        bar.update(1)
        r["canvas_cache"] = suite.canvas_rows(model, tok, cfg)
        bar.update(1)
    r["kv_bytes"] = kv_bytes(model, r["long_capacity"], cfg.long_capacity_prompt)
    return r


def kv_bytes(model, cap: dict, prompt_len: int) -> dict:
    """Prompt KV bytes per prompt token: the full cache's, per layer (as run and
    in bf16, Dream-7B's dtype) and for the model; and per token what the full
    cache and MaskKV hold after one real prefill (``cap``: ``long_capacity``)."""
    c = model.config
    page = figures.page_bytes(model)
    per_layer = c.n_kv_heads * page // 16  # K and V of every KV head
    bf16 = c.n_kv_heads * figures.page_bytes(model, torch.bfloat16) // 16
    return {
        "page_bytes": page,
        "per_token_per_layer": per_layer,
        "per_token_per_layer_bf16": bf16,
        "per_token": per_layer * c.n_layers,
        "full_held_bytes": cap["full"]["held_pages"] * page,
        "maskkv_held_bytes": cap["maskkv"]["held_pages"] * page,
        "full_per_token": cap["full"]["held_pages"] * page / prompt_len,
        "maskkv_per_token": cap["maskkv"]["held_pages"] * page / prompt_len,
    }


def report(r: dict) -> str:
    c, m = r["config"], r["config"]["model"]
    lines = [
        f"maskkv bench --model-shape dream-7b, {r['date']}, {r['machine']}",
        f"random Dream model: {m['layers']} layers, {m['heads']} query heads "
        f"over {m['kv_heads']} KV heads x {m['head_dim']}, MLP "
        f"{m['intermediate'] or 'hidden x 2'} (Dream-7B: {DREAM_7B_LAYERS} layers "
        "of 28 over 4 x 128, MLP 18944), byte vocabulary (262), fp32; random "
        "weights, no real checkpoint; "
        f"gen {c['gen_length']} (block 8, one token per step), MaskKV "
        f"B={c['budget']}",
        "",
        *bytes_lines(r["kv_bytes"], c, m["layers"]),
        "",
        *capacity_lines(r["long_capacity"], c),
        "",
        *step_lines(r["step_time"]),
        "",
        *flat_lines(r["flat_step"]),
        "",
        *canvas.report(r["canvas_cache"]),
    ]
    return "\n".join(lines)


def bytes_lines(b: dict, c: dict, layers: int) -> list[str]:
    m = c["long_capacity_prompt"]
    return [
        f"KV per prompt token per layer: {b['per_token_per_layer']} bytes as run "
        f"(fp32), {b['per_token_per_layer_bf16']} in bf16; {b['per_token']} for "
        f"these {layers} layers",
        f"held after the prefill of one {m}-token prompt: full "
        f"{b['full_held_bytes']} bytes ({b['full_per_token']:.1f} per prompt "
        f"token), MaskKV B={c['budget']} {b['maskkv_held_bytes']} bytes "
        f"({b['maskkv_per_token']:.1f} per prompt token, "
        f"{b['full_held_bytes'] / b['maskkv_held_bytes']:.1f}x less)",
    ]


def capacity_lines(lc: dict, c: dict) -> list[str]:
    full, mk = lc["full"], lc["maskkv"]
    return [
        f"{c['long_capacity_prompt']}-token requests in one {c['pool']} pool "
        f"({full['pool_pages']} pages; admission bound of one real request each): "
        f"full reserves {full['bound_pages']} pages, admits {full['admitted']}; "
        f"MaskKV reserves {mk['bound_pages']} (holds {mk['held_pages']} after its "
        f"prefill), admits {mk['admitted']} "
        f"({mk['admitted'] / max(full['admitted'], 1):.1f}x)",
    ]


def step_lines(rows: list[dict]) -> list[str]:
    """Step medians (after the first) and prefills, full (paged) vs MaskKV."""
    first = rows[0]["maskkv_step_ms"]
    lines = [
        "step time (median ms of the steps after the first), both paged, in "
        "lockstep; prefill = the first step:",
        f"{'prompt':>7} | {'full':>8} | {'maskkv':>8} | {'full/maskkv':>11} | "
        f"{'maskkv/shortest':>15} | {'prefill full':>12} | {'prefill maskkv':>14}",
        f"{'':>7} | {'ms':>8} | {'ms':>8} | {'':>11} | {'':>15} | {'ms':>12} | "
        f"{'ms':>14}",
    ]
    for x in rows:
        lines.append(
            f"{x['prompt_len']:>7} | {x['paged_step_ms']:>8.1f} | "
            f"{x['maskkv_step_ms']:>8.1f} | "
            f"{x['paged_step_ms'] / x['maskkv_step_ms']:>10.2f}x | "
            f"{x['maskkv_step_ms'] / first:>14.2f}x | "
            f"{x['paged_first_ms']:>12.0f} | {x['maskkv_first_ms']:>14.0f}"
        )
    return lines


def flat_lines(rows: list[dict]) -> list[str]:
    """MaskKV's step at every length, the lengths in lockstep."""
    first = rows[0]["step_ms"]
    cells = ", ".join(
        f"{x['prompt_len']}: {x['step_ms']:.1f} ms ({x['step_ms'] / first:.2f}x)"
        for x in rows
    )
    return [
        "MaskKV step at every prompt length, the lengths in lockstep (median ms "
        f"after the first step; x the shortest): {cells}"
    ]


def save(r: dict, out_dir) -> list[str]:
    """Write bench.json and bench.txt; returns their names."""
    write_text_files(r, report(r), out_dir)
    return ["bench.json", "bench.txt"]
