"""Run every figure, print ratios, save JSON and one PNG."""

from __future__ import annotations

import json
import platform
import subprocess
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from tqdm.auto import tqdm

from maskkv_vllm.bench import canvas, figures
from maskkv_vllm.bench.common import ModelSize, bench_checkpoint
from maskkv_vllm.models.loader import load_checkpoint


@dataclass(frozen=True)
class BenchConfig:
    """Sizes of one ``maskkv bench`` run."""

    model: ModelSize = ModelSize()
    prompt_lens: tuple[int, ...] = (256, 1024, 2048, 4096, 8192, 16384, 32768)
    none_max_len: int = 4096
    """The vanilla mode (every step a prefill) runs up to here; longer: not run."""
    repeats: int = 3
    """Lockstep rounds per prompt length (each mode keeps its best round)."""
    repeat_max_len: int = 8192
    """Longer prompts run one round (a 32k round is minutes; noise is relatively
    smaller there)."""
    gen_length: int = 32
    budget: int = 256
    pool: str = "1GiB"
    capacity_prompt: int = 2048
    capacity_pool: str = "128MiB"
    capacity_gen: int = 256
    long_capacity_prompt: int = 32768
    """Requests of this length one ``pool`` holds, full vs MaskKV."""
    throughput_requests: int = 16
    throughput_prompt: int = 1536
    throughput_pool: str = "48MiB"
    decode_requests: int = 8
    """Decode-heavy engine workload: long prompts, a long canvas in big blocks."""
    decode_prompt: int = 8192
    decode_gen: int = 256
    decode_block: int = 32
    decode_pool: str = "300MiB"
    decode_long_requests: int = 2
    """The same workload at 16k-token prompts: every step recomputes the whole
    canvas, so a step's MLP work is fixed and only its attention grows with the
    prompt; at 8k the canvas and the prefill (~145 full-cache steps on a CPU)
    still take most of MaskKV's time. The pool holds one such request with the
    full cache."""
    decode_long_prompt: int = 16384
    canvas_prompt_lens: tuple[int, ...] = (256, 1024, 4096)
    """Prompt lengths of the canvas-cache rows (``bench/canvas.py``)."""
    canvas_shapes: tuple[tuple[int, int], ...] = ((256, 32), (32, 8))
    """(gen_length, block_length) of the canvas-cache rows, one token per step."""
    device: str = "cpu"
    peer_fast_dllm: str | None = None
    """A Fast-dLLM checkout: its prefix and dual cache are timed beside ours."""
    peer_max_len: int = 8192
    """The peer lane's longest prompt (their cache refresh is a full forward per
    block: four 32k prefills per generation would take 10 minutes a mode)."""
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
    none_max_len=64,
    repeats=2,
    long_capacity_prompt=256,
    throughput_requests=4,
    throughput_prompt=128,
    throughput_pool="1MiB",
    decode_requests=3,
    decode_prompt=128,
    decode_gen=32,
    decode_block=16,
    decode_pool="1MiB",
    decode_long_requests=2,
    decode_long_prompt=256,
    canvas_prompt_lens=(64,),
    canvas_shapes=((32, 8), (16, 4)),
)


def run(cfg: BenchConfig) -> dict:
    max_len = max(
        *cfg.prompt_lens,
        cfg.capacity_prompt + cfg.capacity_gen,
        cfg.long_capacity_prompt + cfg.gen_length,
        cfg.throughput_prompt + cfg.gen_length,
        max(cfg.decode_prompt, cfg.decode_long_prompt) + cfg.decode_gen,
    )
    with tempfile.TemporaryDirectory() as ckpt_dir:
        return _run(cfg, max_len, Path(ckpt_dir))


def header(config: dict) -> dict:
    """A run's config, machine and date: the top of its JSON."""
    return {
        "config": config,
        "machine": f"{platform.processor() or platform.machine()}, "
        f"{torch.get_num_threads()} torch threads, torch {torch.__version__}",
        "date": time.strftime("%Y-%m-%d"),
    }


def _run(cfg: BenchConfig, max_len: int, ckpt_dir: Path) -> dict:
    checkpoint = bench_checkpoint(cfg.model, max_len + 64, ckpt_dir)
    model, tok = load_checkpoint(checkpoint, "float32", cfg.device)
    results = header(asdict(cfg))
    peer_lens = [m for m in cfg.prompt_lens if m <= cfg.peer_max_len]
    total = len(cfg.prompt_lens) * len(figures.MODES) + 7
    total += 1 if cfg.peer_fast_dllm else 0
    with tqdm(total=total, desc="maskkv bench") as bar:
        results["page_bytes"] = figures.page_bytes(model)
        results["step_time"] = step_rows(model, tok, cfg, bar)
        results["capacity"] = figures.capacity(
            model, tok, cfg.capacity_prompt, cfg.capacity_gen, cfg.budget,
            cfg.capacity_pool,
        )  # fmt: skip
        bar.update(1)
        results["long_capacity"] = figures.long_capacity(
            model, tok, cfg.long_capacity_prompt, cfg.gen_length, cfg.budget, cfg.pool
        )
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
        results["decode_heavy"] = figures.throughput(
            model, tok, cfg.decode_requests, cfg.decode_prompt, cfg.decode_gen,
            cfg.budget, cfg.decode_pool, cfg.decode_block, dual=True,
        )  # fmt: skip
        bar.update(1)
        results["decode_long"] = figures.throughput(
            model, tok, cfg.decode_long_requests, cfg.decode_long_prompt,
            cfg.decode_gen, cfg.budget, cfg.decode_pool, cfg.decode_block,
        )  # fmt: skip
        bar.update(1)
        results["canvas_cache"] = canvas_rows(model, tok, cfg)
        bar.update(1)
        if cfg.peer_fast_dllm:
            results["peer_fast_dllm"] = {
                "path": cfg.peer_fast_dllm,
                "commit": _commit_of(cfg.peer_fast_dllm),
                "rows": figures.peer_fast_dllm(
                    model, tok, checkpoint, cfg.peer_fast_dllm,
                    peer_lens, cfg.gen_length, cfg.budget, cfg.device, cfg.pool,
                ),
            }  # fmt: skip
            bar.update(1)
    return results


def step_rows(model, tok, cfg: BenchConfig, bar=None, modes=figures.MODES) -> list:
    """``figures.step_time_curve`` at ``cfg``'s lengths, budget and rounds."""
    return figures.step_time_curve(
        model, tok, cfg.prompt_lens, cfg.gen_length, cfg.budget, cfg.device,
        cfg.pool, bar, cfg.none_max_len, cfg.repeats, cfg.repeat_max_len, modes,
    )  # fmt: skip


def canvas_rows(model, tok, cfg: BenchConfig) -> list[dict]:
    """``canvas.canvas_step_time`` at ``cfg``'s lengths and shapes."""
    return canvas.canvas_step_time(
        figures.sampler_for(model, tok, "paged", cfg.pool), tok,
        cfg.canvas_prompt_lens, cfg.canvas_shapes, cfg.budget, cfg.device,
        cfg.repeats,
    )  # fmt: skip


def _commit_of(path: str) -> str | None:
    """The checkout's git commit, when it is a git work tree."""
    try:
        out = subprocess.run(
            ["git", "-C", path, "rev-parse", "HEAD"],
            capture_output=True, text=True, timeout=10, check=True,
        )  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def _ms(value: float | None) -> str:
    return "not run" if value is None else f"{value:.2f}"


def _ratio(a: float | None, b: float | None, digits: int = 2) -> str:
    return "-" if a is None or b is None else f"{a / b:.{digits}f}x"


def targets(r: dict) -> list[tuple[str, float, str, bool]]:
    """(what, measured, target, met) for issue 18's targets, from this run."""
    rows = r["step_time"]
    first, last = rows[0], rows[-1]
    out = [
        (f"MaskKV step({last['prompt_len']}) / step({first['prompt_len']})",
         last["maskkv_step_ms"] / first["maskkv_step_ms"], "<= 1.3"),
        (f"prefix step / MaskKV step at {last['prompt_len']}",
         last["prefix_step_ms"] / last["maskkv_step_ms"], ">= 10"),
        ("paged / prefix step, worst length",
         max(x["paged_step_ms"] / x["prefix_step_ms"] for x in rows), "<= 1.05"),
        ("MaskKV prefill / dense prefill, worst length",
         max(x["maskkv_first_ms"] / x["prefix_first_ms"] for x in rows), "<= 1.1"),
    ]  # fmt: skip
    cap = r["long_capacity"]
    out.append(
        (f"{r['config']['long_capacity_prompt']}-token requests admitted, "
         "MaskKV / full", cap["maskkv"]["admitted"] / max(1, cap["full"]["admitted"]),
         ">= 50")
    )  # fmt: skip
    d = r["decode_long"]
    out.append(
        (f"decode-heavy engine tokens/s ({r['config']['decode_long_prompt']}-token "
         "prompts), MaskKV / full",
         d["maskkv"]["tokens_per_s"] / d["full"]["tokens_per_s"], ">= 3")
    )  # fmt: skip
    if "canvas_cache" in r:
        out += canvas.targets(r["canvas_cache"])
        dh = r["decode_heavy"]
        out.append(
            (f"decode-heavy engine tokens/s (gen {r['config']['decode_gen']}), "
             "MaskKV + dual / MaskKV + none",
             dh["maskkv_dual"]["tokens_per_s"] / dh["maskkv"]["tokens_per_s"], ">= 3")
        )  # fmt: skip
    peer = r.get("peer_fast_dllm", {}).get("rows", [])
    if peer and "ours_maskkv_dual" in peer[0]:
        out.append(
            ("our MaskKV + dual step / Fast-dLLM's dual-cache step (mean), worst "
             "length", max(x["ours_maskkv_dual"]["mean_step_ms"]
                           / x["peer_dual"]["mean_step_ms"] for x in peer), "<= 1")
        )  # fmt: skip
    return [(w, v, t, _met(v, t)) for w, v, t in out]


def _met(value: float, target: str) -> bool:
    op, bound = target.split()
    return value <= float(bound) if op == "<=" else value >= float(bound)


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
        f" | {'prefix/maskkv':>13} | {'paged/prefix':>12} | {'e2e none/maskkv':>15}",
    ]
    for row in r["step_time"]:
        lines.append(
            f"{row['prompt_len']:>7} | {_ms(row['none_step_ms']):>8} | "
            f"{row['prefix_step_ms']:>8.2f} | {row['paged_step_ms']:>8.2f} | "
            f"{row['maskkv_step_ms']:>8.2f} | "
            f"{_ratio(row['prefix_step_ms'], row['maskkv_step_ms'], 1):>13} | "
            f"{_ratio(row['paged_step_ms'], row['prefix_step_ms']):>12} | "
            f"{_ratio(row['none_total_ms'], row['maskkv_total_ms'], 1):>15}"
        )
    lines += ["", "prefill (the first step, ms):",
              f"{'prompt':>7} | {'prefix':>9} | {'paged':>9} | {'maskkv':>9} | "
              f"{'maskkv/prefix':>13} | {'paged/prefix':>12}"]  # fmt: skip
    for row in r["step_time"]:
        lines.append(
            f"{row['prompt_len']:>7} | {row['prefix_first_ms']:>9.1f} | "
            f"{row['paged_first_ms']:>9.1f} | {row['maskkv_first_ms']:>9.1f} | "
            f"{_ratio(row['maskkv_first_ms'], row['prefix_first_ms']):>13} | "
            f"{_ratio(row['paged_first_ms'], row['prefix_first_ms']):>12}"
        )
    cap = r["capacity"]
    lines += [
        "",
        f"concurrent {c['capacity_prompt']}-token requests in one "
        f"{c['capacity_pool']} pool: full {cap['full']['running']}, MaskKV "
        f"{cap['maskkv']['running']} "
        f"({cap['maskkv']['running'] / max(cap['full']['running'], 1):.1f}x)",
    ]
    lc = r["long_capacity"]
    lines.append(
        f"{c['long_capacity_prompt']}-token requests in one {c['pool']} pool "
        f"({lc['full']['pool_pages']} pages; one real request each): full reserves "
        f"{lc['full']['bound_pages']} pages, admits {lc['full']['admitted']}; MaskKV "
        f"reserves {lc['maskkv']['bound_pages']}, holds {lc['maskkv']['held_pages']} "
        f"after its prefill, admits {lc['maskkv']['admitted']} "
        f"({lc['maskkv']['admitted'] / max(lc['full']['admitted'], 1):.0f}x)"
    )
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
    for key, n, m in (("decode_heavy", c["decode_requests"], c["decode_prompt"]),
                      ("decode_long", c["decode_long_requests"],
                       c["decode_long_prompt"])):  # fmt: skip
        d = r[key]
        lines.append(
            f"engine, decode-heavy: {n} x ~{m}-token requests, gen "
            f"{c['decode_gen']} in blocks of {c['decode_block']}, "
            f"{c['decode_pool']} pool: "
            f"full {d['full']['tokens_per_s']:.1f} tok/s peak "
            f"{d['full']['peak_running']} running; MaskKV "
            f"{d['maskkv']['tokens_per_s']:.1f} tok/s peak "
            f"{d['maskkv']['peak_running']} running "
            f"({d['maskkv']['tokens_per_s'] / d['full']['tokens_per_s']:.2f}x tok/s)"
        )
    if "maskkv_dual" in r["decode_heavy"]:
        d = r["decode_heavy"]
        lines.append(
            f"  the same, MaskKV + dual canvas cache: "
            f"{d['maskkv_dual']['tokens_per_s']:.1f} tok/s "
            f"({d['maskkv_dual']['tokens_per_s'] / d['full']['tokens_per_s']:.2f}x "
            "full + none)"
        )
    if "canvas_cache" in r:
        lines += ["", *canvas.report(r["canvas_cache"])]
    if "peer_fast_dllm" in r:
        lines += ["", *peer_report(r["peer_fast_dllm"], c)]
    lines += ["", "targets (issues 18 and 28), measured in this run:"]
    for what, value, target, met in targets(r):
        lines.append(f"  {what}: {value:.2f} (target {target}) {_word(met)}")
    return "\n".join(lines)


def peer_report(peer: dict, c: dict) -> list[str]:
    """The Fast-dLLM lane's table: per-step medians and our/peer ratios."""
    lines = [
        f"Fast-dLLM ({peer['path']}, commit {peer['commit'] or 'unknown'}), their "
        f"code on the same checkpoint, gen {c['gen_length']} in blocks of 8, one "
        "token per step; ms per cached step (median):",
        f"{'prompt':>7} | {'peer prefix':>11} | {'peer dual':>9} | {'our prefix':>10}"
        f" | {'our maskkv':>10} | {'prefix ours/peer':>16} | "
        f"{'maskkv/peer dual':>16} | {'e2e peer dual/maskkv':>20} | "
        f"{'same tokens (prefix)':>20}",
    ]
    return _peer_rows(peer, lines) + _peer_canvas_lines(peer)


def _peer_canvas_lines(peer: dict) -> list[str]:
    """Their dual cache beside our canvas cache: mean ms of every step after the
    first (block boundaries included) and the tokens of the same schedule."""
    if not any("ours_maskkv_dual" in row for row in peer["rows"]):
        return []  # a run from before the canvas cache
    lines = [
        "", "with the canvas cache (mean ms per step after the first):",
        f"{'prompt':>7} | {'peer dual':>9} | {'our dual_refresh':>16} | "
        f"{'our maskkv+dual':>15} | {'maskkv+dual/peer':>16} | "
        f"{'same tokens (dual_refresh/peer dual)':>36}",
    ]  # fmt: skip
    for row in peer["rows"]:
        if "ours_maskkv_dual" not in row:
            continue
        pd, dr, md = row["peer_dual"], row["ours_dual_refresh"], row["ours_maskkv_dual"]
        same = sum(a == b for a, b in zip(dr["tokens"], pd["tokens"], strict=True))
        tokens = f"{same}/{len(pd['tokens'])}"
        lines.append(
            f"{row['prompt_len']:>7} | {pd['mean_step_ms']:>9.2f} | "
            f"{dr['mean_step_ms']:>16.2f} | {md['mean_step_ms']:>15.2f} | "
            f"{_ratio(md['mean_step_ms'], pd['mean_step_ms']):>16} | {tokens:>36}"
        )
    return lines


def _peer_rows(peer: dict, lines: list[str]) -> list[str]:
    for row in peer["rows"]:
        pp, pd = row["peer_prefix"], row["peer_dual"]
        op, om = row["ours_prefix"], row["ours_maskkv"]
        same = sum(a == b for a, b in zip(op["tokens"], pp["tokens"], strict=True))
        tokens = f"{same}/{len(op['tokens'])}"
        lines.append(
            f"{row['prompt_len']:>7} | {pp['step_ms']:>11.2f} | {pd['step_ms']:>9.2f}"
            f" | {op['step_ms']:>10.2f} | {om['step_ms']:>10.2f} | "
            f"{_ratio(op['step_ms'], pp['step_ms']):>16} | "
            f"{_ratio(om['step_ms'], pd['step_ms']):>16} | "
            f"{_ratio(pd['total_ms'], om['total_ms'], 1):>20} | "
            f"{tokens:>20}"
        )
    return lines


def _word(met: bool) -> str:
    return "met" if met else "MISSED"


def plot(r: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b, c) = plt.subplots(1, 3, figsize=(14, 4))
    for label, *_ in figures.MODES:
        pts = [(row["prompt_len"], row[f"{label}_step_ms"]) for row in r["step_time"]
               if row[f"{label}_step_ms"] is not None]  # fmt: skip
        a.plot([x for x, _ in pts], [y for _, y in pts], marker="o", label=label)
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


def save(r: dict, out_dir: Path) -> list[str]:
    """Write bench.json, bench.txt and bench.png; returns their names."""
    write_text_files(r, report(r), out_dir)
    plot(r, out_dir / "bench.png")
    return ["bench.json", "bench.txt", "bench.png"]


def write_text_files(r: dict, text: str, out_dir: Path) -> None:
    """bench.json (the results) and bench.txt (their report) under ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "bench.json").write_text(json.dumps(r, indent=2))
    (out_dir / "bench.txt").write_text(text + "\n")
