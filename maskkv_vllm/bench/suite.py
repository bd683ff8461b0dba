"""Run every figure, print ratios, save JSON and one PNG."""

from __future__ import annotations

import json
import platform
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from tqdm.auto import tqdm

from maskkv_vllm.bench import figures
from maskkv_vllm.bench.common import ModelSize, bench_model


@dataclass(frozen=True)
class BenchConfig:
    """Sizes of one ``maskkv bench`` run."""

    model: ModelSize = ModelSize()
    prompt_lens: tuple[int, ...] = (256, 1024, 2048, 4096, 8192)
    gen_length: int = 32
    budget: int = 256
    pool: str = "1GiB"
    capacity_prompt: int = 2048
    capacity_pool: str = "128MiB"
    capacity_gen: int = 256
    throughput_requests: int = 16
    throughput_prompt: int = 1536
    throughput_pool: str = "48MiB"
    device: str = "cpu"
    extra: dict = field(default_factory=dict)


QUICK = BenchConfig(
    model=ModelSize(layers=2, heads=2, head_dim=32),
    prompt_lens=(64, 128),
    gen_length=8,
    budget=16,
    pool="16MiB",
    capacity_prompt=128,
    capacity_pool="512KiB",
    capacity_gen=64,
    throughput_requests=4,
    throughput_prompt=128,
    throughput_pool="1MiB",
)


def run(cfg: BenchConfig) -> dict:
    max_len = max(*cfg.prompt_lens, cfg.capacity_prompt, cfg.throughput_prompt)
    model, tok = bench_model(cfg.model, max_len + cfg.capacity_gen + 64, cfg.device)
    results: dict = {
        "config": asdict(cfg),
        "machine": f"{platform.processor() or platform.machine()}, "
        f"{torch.get_num_threads()} torch threads, torch {torch.__version__}",
        "date": time.strftime("%Y-%m-%d"),
    }
    total = len(cfg.prompt_lens) * len(figures.MODES) + 3
    with tqdm(total=total, desc="maskkv bench") as bar:
        results["page_bytes"] = figures.page_bytes(model)
        results["step_time"] = figures.step_time_curve(
            model, tok, cfg.prompt_lens, cfg.gen_length, cfg.budget, cfg.device,
            cfg.pool, bar,
        )  # fmt: skip
        results["capacity"] = figures.capacity(
            model, tok, cfg.capacity_prompt, cfg.capacity_gen, cfg.budget,
            cfg.capacity_pool,
        )  # fmt: skip
        bar.update(1)
        results["prefill_peak"] = figures.prefill_peak(
            model, tok, max(cfg.prompt_lens), cfg.gen_length, cfg.budget, cfg.pool
        )
        bar.update(1)
        results["throughput"] = figures.throughput(
            model, tok, cfg.throughput_requests, cfg.throughput_prompt,
            cfg.gen_length, cfg.budget, cfg.throughput_pool,
        )  # fmt: skip
        bar.update(1)
    return results


def report(r: dict) -> str:
    c = r["config"]
    lines = [
        f"maskkv bench, {r['date']}, {r['machine']}; model "
        f"{c['model']['layers']}x{c['model']['heads']}x{c['model']['head_dim']}, "
        f"gen {c['gen_length']} (block 8, one token per step), MaskKV B={c['budget']}",
        "",
        f"one page = 16 slots of one (layer, KV head) = {r['page_bytes']} bytes",
        "step time (median ms of the steps after the first) and end-to-end time:",
        f"{'prompt':>7} | {'none':>8} | {'prefix':>8} | {'paged':>8} | {'maskkv':>8}"
        f" | {'none/maskkv':>11} | {'paged/prefix':>12} | {'e2e none/maskkv':>15}",
    ]
    for row in r["step_time"]:
        lines.append(
            f"{row['prompt_len']:>7} | {row['none_step_ms']:>8.2f} | "
            f"{row['prefix_step_ms']:>8.2f} | {row['paged_step_ms']:>8.2f} | "
            f"{row['maskkv_step_ms']:>8.2f} | "
            f"{row['none_step_ms'] / row['maskkv_step_ms']:>10.1f}x | "
            f"{row['paged_step_ms'] / row['prefix_step_ms']:>11.2f}x | "
            f"{row['none_total_ms'] / row['maskkv_total_ms']:>14.1f}x"
        )
    cap = r["capacity"]
    lines += [
        "",
        f"concurrent {c['capacity_prompt']}-token requests in one "
        f"{c['capacity_pool']} pool: full {cap['full']['running']}, MaskKV "
        f"{cap['maskkv']['running']} "
        f"({cap['maskkv']['running'] / max(cap['full']['running'], 1):.1f}x)",
    ]
    p = r["prefill_peak"]
    lines.append(
        f"prefill of a {max(c['prompt_lens'])}-token prompt with MaskKV: pool peak "
        f"{p['peak_pages']} pages = compressed {p['compressed_pages']} "
        f"(bound compressed + one full layer = {p['bound_pages']}; full prompt "
        f"{p['full_prompt_pages']})"
    )
    t = r["throughput"]
    lines.append(
        f"engine, {c['throughput_requests']} x ~{c['throughput_prompt']}-token "
        f"requests, {c['throughput_pool']} pool: full "
        f"{t['full']['requests_per_s']:.2f} req/s {t['full']['tokens_per_s']:.1f} "
        f"tok/s peak {t['full']['peak_running']} running; MaskKV "
        f"{t['maskkv']['requests_per_s']:.2f} req/s {t['maskkv']['tokens_per_s']:.1f}"
        f" tok/s peak {t['maskkv']['peak_running']} running "
        f"({t['maskkv']['tokens_per_s'] / t['full']['tokens_per_s']:.2f}x tok/s)"
    )
    return "\n".join(lines)


def plot(r: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b, c) = plt.subplots(1, 3, figsize=(14, 4))
    xs = [row["prompt_len"] for row in r["step_time"]]
    for label, *_ in figures.MODES:
        a.plot(xs, [row[f"{label}_step_ms"] for row in r["step_time"]], marker="o",
               label=label)  # fmt: skip
    a.set(xscale="log", yscale="log", xlabel="prompt tokens", ylabel="ms / step",
          title="denoising step time")  # fmt: skip
    a.legend()
    cap = r["capacity"]
    b.bar(["full", "MaskKV"], [cap["full"]["running"], cap["maskkv"]["running"]])
    b.set(title=f"requests in one {r['config']['capacity_pool']} pool",
          ylabel="concurrent requests")  # fmt: skip
    t = r["throughput"]
    c.bar(["full", "MaskKV"], [t["full"]["tokens_per_s"], t["maskkv"]["tokens_per_s"]])
    c.set(title="engine throughput", ylabel="generated tokens / s")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def save(r: dict, out_dir: Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "bench.json").write_text(json.dumps(r, indent=2))
    (out_dir / "bench.txt").write_text(report(r) + "\n")
    plot(r, out_dir / "bench.png")
