"""Long-prompt requests in one KV budget: vLLM (our plugin) vs the embedded engine.

    HF_HUB_OFFLINE=1 VLLM_TARGET_DEVICE=cpu VLLM_CPU_KVCACHE_SPACE=1 \\
    VLLM_ENABLE_V1_MULTIPROCESSING=0 \\
      .venv-vllm/bin/python benchmarks/vllm_capacity.py --json out.json
    # CI: --quick (tiny model only, short prompts; no targets asserted)

For each model (a random tiny LLaDA, a random tiny Dream with grouped-query
attention, and the shipped trained ``retrieval`` model),
one in-process vLLM engine (vllm-cpu, our scheduler/worker) gets a fixed pool of
``--fit`` full-cache requests (``num_gpu_blocks_override``), and the embedded
engine gets the same number of bytes (``kv_cache_memory``). The same N prompts of
M tokens (the ``kv`` retrieval task for the trained model, random printable bytes
for the tiny one) are submitted at once, for the full cache and for SnapKV and
MaskKV at each budget B. Per run it prints:

- peak running requests in vLLM and in the embedded engine, and their ratio;
- bytes each request holds after step 0 (vLLM: its blocks x block bytes;
  embedded: its pages x page bytes), mean over requests, and the slack vLLM may
  take: one vLLM block per layer (one block = one layer's KV heads);
- the prefill peak: the blocks a request holds during step 0 (its admission
  bound), against its compressed footprint plus one layer's full prompt KV.

Targets (issue 12): vLLM peak running >= 0.9 x embedded; bytes held per
request <= 1.1 x embedded + one block per layer; prefill peak <= compressed +
one layer's full prompt KV. Each is printed as met or not, from this run.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
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
    """``MaskKVDiffusionScheduler`` recording running requests and blocks held."""
    from maskkv_vllm.vllm_adapter.core.scheduler import MaskKVDiffusionScheduler

    class CapacityScheduler(MaskKVDiffusionScheduler):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.reset_trace()

        def reset_trace(self):
            self.running_per_step: list[int] = []
            self.held: dict[str, int] = {}
            self.reserved_at_step0: dict[str, int] = {}
            self.preempted = 0

        def schedule(self, *args, **kwargs):
            out = super().schedule(*args, **kwargs)
            self.running_per_step.append(len(self.running))
            return out

        def release_unused_blocks(self, req_id, kept_lengths):
            self.reserved_at_step0[req_id] = self.block_manager.num_held(req_id)
            freed = super().release_unused_blocks(req_id, kept_lengths)
            self.held[req_id] = self.block_manager.num_held(req_id)
            return freed

        def _preempt_request(self, *args, **kwargs):
            self.preempted += 1
            return super()._preempt_request(*args, **kwargs)

    return CapacityScheduler


def random_prompts(n: int, length: int) -> list[list[int]]:
    """n distinct prompts: <bos> + random printable bytes (byte tokenizer ids)."""
    rng = random.Random(0)
    return [
        [256] + [rng.randrange(32, 127) for _ in range(length - 1)] for _ in range(n)
    ]


def task_prompts(model_dir, n: int, length: int) -> list[list[int]]:
    """n ``kv`` retrieval prompts of about ``length`` tokens, tokenized."""
    from maskkv_vllm.evaluation.synthetic import make_samples
    from maskkv_vllm.models.llada_config import LLaDAConfig
    from maskkv_vllm.models.tokenizer import Tokenizer

    with open(os.path.join(model_dir, "config.json")) as f:
        tok = Tokenizer.from_dir(model_dir, LLaDAConfig.from_dict(json.load(f)))
    samples = make_samples(0, n, length, tasks=("kv",))
    return [tok.encode(s.prompt) for s in samples]


def run_vllm(llm, scheduler, prompts, params) -> dict:
    from maskkv_vllm.vllm_adapter.entrypoints.api import generate

    scheduler.reset_trace()
    t0 = time.perf_counter()
    outs = generate(llm, prompts, params)
    return {
        "peak_running": max(scheduler.running_per_step),
        "steps": len(scheduler.running_per_step),
        "wall_s": round(time.perf_counter() - t0, 1),
        "held_blocks": list(scheduler.held.values()),
        "reserved_blocks": list(scheduler.reserved_at_step0.values()),
        "preemptions": scheduler.preempted,
        "finished": len(outs),
        "token_ids": [o.token_ids for o in outs],
    }


def run_embedded(engine, prompts, params) -> dict:
    engine.engine.scheduler.max_running = 0
    t0 = time.perf_counter()
    outs = engine.generate(prompts, params, use_tqdm=False)
    return {
        "peak_running": engine.engine.scheduler.max_running,
        "wall_s": round(time.perf_counter() - t0, 1),
        "pages": [o.stats.num_pages for o in outs],
        "finished": len(outs),
        "token_ids": [o.token_ids for o in outs],
    }


def measure_model(name: str, path: str, args, prompts) -> list[dict]:
    from maskkv_vllm.engine.llm import LLM as EmbeddedLLM
    from maskkv_vllm.kv_cache.page_store import PageStore
    from maskkv_vllm.models.loader import architecture_of
    from maskkv_vllm.sampling_params import SamplingParams
    from maskkv_vllm.vllm_adapter.entrypoints.api import make_llm

    with open(os.path.join(path, "config.json")) as f:
        raw = json.load(f)
    cfg = architecture_of(raw).config_cls.from_dict(raw)
    bs, d, heads, layers = args.block_size, cfg.head_dim, cfg.n_kv_heads, cfg.n_layers
    m = max(len(p) for p in prompts)
    full_blocks = layers * -(-m // bs)  # a full-cache request, every layer
    num_blocks = args.fit * full_blocks + 1  # + vLLM's null block
    block_bytes = heads * bs * 2 * d * 4  # fp32
    pool_bytes = (num_blocks - 1) * block_bytes
    page_bytes = PageStore.bytes_per_page(bs, d, __import__("torch").float32)
    llm = make_llm(
        path,
        max_model_len=m + args.gen_length + bs,
        block_size=bs,
        num_gpu_blocks_override=num_blocks,
        max_num_seqs=256,
        max_num_batched_tokens=max(8192, 2 * (m + args.gen_length)),
        scheduler_cls=tracing_scheduler_cls(),
    )
    scheduler = llm.llm_engine.engine_core.engine_core.scheduler
    embedded = EmbeddedLLM(
        path,
        dtype="float32",  # as the vLLM engine above (block_bytes)
        kv_cache_memory=pool_bytes,
        page_size=bs,
        max_num_seqs=256,
        max_model_len=m + args.gen_length + bs,
    )
    runs = [("full", None)] + [
        (policy, b) for b in args.budgets for policy in args.policies
    ]
    rows = []
    for policy, budget in runs:
        params = SamplingParams(
            gen_length=args.gen_length,
            block_length=args.gen_length,
            steps=args.steps,
            kv_policy=policy,
            kv_budget=budget,
        )
        v = run_vllm(llm, scheduler, prompts, params)
        e = run_embedded(embedded, prompts, params)
        held = statistics.mean(v["held_blocks"]) * block_bytes
        emb = statistics.mean(e["pages"]) * page_bytes
        compressed = statistics.mean(v["held_blocks"])
        prefill_peak = max(v["reserved_blocks"])
        one_layer = -(-m // bs)  # one layer's full prompt: Hkv pages x ceil(M/P)
        row = {
            "model": name,
            "policy": policy,
            "budget": budget,
            "prompt_tokens": m,
            "requests": len(prompts),
            "vllm_peak_running": v["peak_running"],
            "embedded_peak_running": e["peak_running"],
            "running_ratio": round(v["peak_running"] / e["peak_running"], 3),
            "vllm_bytes_per_request": round(held),
            "embedded_bytes_per_request": round(emb),
            "bytes_ratio": round(held / emb, 3),
            "bytes_target": round(1.1 * emb + layers * block_bytes),
            "prefill_peak_blocks": prefill_peak,
            "compressed_blocks_mean": round(compressed, 2),
            "compressed_blocks_max": max(v["held_blocks"]),
            "prefill_target_blocks": max(v["held_blocks"]) + one_layer,
            "vllm_preemptions": v["preemptions"],
            "tokens_equal": v["token_ids"] == e["token_ids"],
            "vllm_wall_s": v["wall_s"],
            "embedded_wall_s": e["wall_s"],
        }
        row["met_running"] = row["running_ratio"] >= 0.9
        row["met_bytes"] = held <= row["bytes_target"]
        row["met_prefill"] = prefill_peak <= row["prefill_target_blocks"]
        rows.append(row)
        print(
            f"  {name} {policy:<7} B={budget or '-':>4}: vLLM {v['peak_running']:>3} "
            f"/ embedded {e['peak_running']:>3} running; "
            f"{held / 2**10:8.0f} / {emb / 2**10:8.0f} KiB per request",
            file=sys.stderr,
            flush=True,
        )
    pool = {
        "model": name,
        "vllm_blocks": num_blocks - 1,
        "block_bytes": block_bytes,
        "pool_bytes": pool_bytes,
        "embedded_page_bytes": page_bytes,
        "layers": layers,
        "kv_heads": heads,
        "head_dim": d,
    }
    llm.llm_engine.engine_core.shutdown()
    del llm
    return rows, pool


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prompt-len", type=int, default=2048)
    ap.add_argument("--gen-length", type=int, default=32)
    ap.add_argument("--steps", type=int, default=32)
    ap.add_argument("--requests", type=int, default=48)
    ap.add_argument("--budgets", type=int, nargs="+", default=[32, 64, 256])
    ap.add_argument("--policies", nargs="+", default=["snapkv", "maskkv"])
    ap.add_argument(
        "--fit", type=int, default=2, help="full-cache requests the pool holds"
    )
    ap.add_argument("--block-size", type=int, default=32)
    ap.add_argument(
        "--models", nargs="+", default=["tiny", "tiny-dream", "retrieval"],
        help="tiny (random LLaDA, 4 KV heads), tiny-dream (random Dream, 8 query "
        "heads over 2 KV heads), retrieval (the shipped trained LLaDA)",
    )  # fmt: skip
    ap.add_argument(
        "--quick", action="store_true", help="CI: tiny model, short prompts"
    )
    ap.add_argument("--json", help="also write the results to this file")
    args = ap.parse_args()
    if args.quick:
        args.prompt_len, args.requests, args.budgets = 256, 8, [32]
        args.models, args.steps, args.gen_length = ["tiny", "tiny-dream"], 8, 16

    import torch
    import vllm

    from maskkv_vllm.models.builtin import resolve_model
    from maskkv_vllm.models.tiny import write_tiny_checkpoint
    from maskkv_vllm.models.tiny_dream import write_tiny_dream_checkpoint

    t0 = time.perf_counter()
    rows, pools = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models:
            if name == "tiny":
                path = str(
                    write_tiny_checkpoint(
                        tmp, seed=0, head_dim=64, n_layers=4, n_heads=4, n_kv_heads=4,
                        max_sequence_length=args.prompt_len + args.gen_length + 64,
                    )
                )  # fmt: skip
                prompts = random_prompts(args.requests, args.prompt_len)
            elif name == "tiny-dream":
                path = str(
                    write_tiny_dream_checkpoint(
                        os.path.join(tmp, "dream"), seed=0, head_dim=64, n_layers=4,
                        n_heads=8, n_kv_heads=2,
                        max_position_embeddings=args.prompt_len + args.gen_length + 64,
                    )
                )  # fmt: skip
                prompts = random_prompts(args.requests, args.prompt_len)
            else:
                path = str(resolve_model(name))
                prompts = task_prompts(path, args.requests, args.prompt_len)
            r, p = measure_model(name, path, args, prompts)
            rows += r
            pools.append(p)

    out = sys.stdout
    print(
        f"vllm {vllm.__version__}, torch {torch.__version__}, {platform.machine()} "
        f"{os.cpu_count()} cores, threads {torch.get_num_threads()}; "
        f"total {time.perf_counter() - t0:.0f} s",
        file=out,
    )
    print(
        f"workload: {args.requests} requests at once, M ~ {args.prompt_len}, "
        f"canvas L = {args.gen_length} ({args.steps} steps), fp32",
        file=out,
    )
    for p in pools:
        print(
            f"pool ({p['model']}: {p['layers']} layers x {p['kv_heads']} KV heads x "
            f"{p['head_dim']}): {p['vllm_blocks']} vLLM blocks of "
            f"{p['block_bytes']} B = {p['pool_bytes'] / 2**20:.2f} MiB "
            f"({args.fit} full requests); the embedded engine gets the same bytes "
            f"in {p['embedded_page_bytes']} B pages",
            file=out,
        )
    print(file=out)
    head = (
        f"{'model':<9} {'policy':<7} {'B':>4} {'run vLLM':>8} {'run emb':>7} "
        f"{'ratio':>5} {'KiB/req vLLM':>12} {'KiB/req emb':>11} {'ratio':>5} "
        f"{'prefill blk':>11} {'cmp+layer':>9} {'same tok':>8} {'targets':>7}"
    )
    print(head, file=out)
    for r in rows:
        met = "".join(
            "y" if r[k] else "n" for k in ("met_running", "met_bytes", "met_prefill")
        )
        print(
            f"{r['model']:<9} {r['policy']:<7} {r['budget'] or '-':>4} "
            f"{r['vllm_peak_running']:>8} {r['embedded_peak_running']:>7} "
            f"{r['running_ratio']:>5.2f} {r['vllm_bytes_per_request'] / 2**10:>12.0f} "
            f"{r['embedded_bytes_per_request'] / 2**10:>11.0f} "
            f"{r['bytes_ratio']:>5.2f} "
            f"{r['prefill_peak_blocks']:>11} {r['prefill_target_blocks']:>9} "
            f"{str(r['tokens_equal']):>8} {met:>7}",
            file=out,
        )
    print(
        "\ncolumns: run = peak running requests (vLLM: len(scheduler.running) after "
        "each schedule(); embedded: its scheduler's max_running); KiB/req = mean "
        "bytes a request holds after step 0; prefill blk = most blocks a request "
        "held during step 0 (its admission bound); cmp+layer = its compressed "
        "blocks + one layer's full prompt KV; same tok = vLLM and embedded tokens "
        "equal; targets = running >= 0.9 x embedded, bytes <= 1.1 x embedded + one "
        "block per layer, prefill <= compressed + one layer (y = met)",
        file=out,
    )
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "pools": pools, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
