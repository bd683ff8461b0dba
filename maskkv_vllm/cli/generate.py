"""``maskkv generate``: denoise prompts and print the answers (one shot)."""

from __future__ import annotations

import argparse
import json

from maskkv_vllm.cli.command import add_command
from maskkv_vllm.cli.sampling import add_sampling_args, sampling_params
from maskkv_vllm.engine.engine_args import EngineArgs
from maskkv_vllm.sampling_params import SamplingParams


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    gen = add_command(
        subparsers, "generate", "denoise prompts and print the answers (one shot)"
    )
    gen.add_argument("prompts", nargs="+", help="prompt text(s)")
    EngineArgs.add_cli_args(gen)  # --kv-cache-memory auto: what these prompts need
    add_sampling_args(gen)
    gen.add_argument("--chat", action="store_true", help="wrap in the chat template")
    gen.add_argument("--json", action="store_true", help="one JSON object per output")
    gen.set_defaults(func=cmd_generate)


def cmd_generate(args: argparse.Namespace) -> int:
    params = sampling_params(args)
    llm, prompt_ids = one_shot_llm(args, params)
    outputs = llm.generate(prompt_ids, params)
    for o in outputs:
        print_output(o, args)
    stats = llm.engine.pool_stats()
    if stats is not None and not args.json:
        print(
            f"[page pool: {stats['num_pages']} pages of {stats['bytes_per_page']} "
            f"bytes, peak {stats['max_used_pages']} used, "
            f"{stats['num_free_pages']} free now]"
        )
    return 0


def print_output(o, args: argparse.Namespace) -> None:
    """One answer: a JSON object with ``--json``, else its text and its stats."""
    import dataclasses

    if args.json:
        print(json.dumps(dataclasses.asdict(o)))
        return
    st = o.stats
    print(f"--- {o.request_id} ({st.prompt_tokens} prompt tokens)")
    print(o.text)
    print(
        f"[{o.finish_reason}; {st.num_steps} denoising steps; prompt KV: "
        f"{st.num_pages} pages, {st.kept_kv_entries} entries kept, "
        f"{st.evicted_kv_entries} evicted ({args.cache_mode}, {args.kv_policy})]"
    )


def prompt_ids(args: argparse.Namespace, tok) -> list[list[int]]:
    """The prompts as token ids, tokenized once (chat-wrapped with ``--chat``)."""
    if not args.chat:
        return [tok.encode(p) for p in args.prompts]
    return [tok.encode_chat([{"role": "user", "content": p}]) for p in args.prompts]


def one_shot_llm(args: argparse.Namespace, params: SamplingParams):
    """The LLM of ``maskkv generate`` and the prompts' token ids: with
    ``--kv-cache-memory auto`` its pool holds what these prompts need with the full
    cache (and their canvas cache), not a server's 1 GiB."""
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
        # Each head also keeps its canvas cache's entries after the prompt's.
        canvas = params.canvas_cache or engine_args.canvas_cache
        extra = dataclasses.replace(params, canvas_cache=canvas).canvas_entries(
            c.n_heads // c.n_kv_heads
        )
        pages = sum(-(-(len(p) + extra) // engine_args.page_size) for p in ids)
        total = 1 + rows * c.n_layers * c.n_kv_heads * pages  # + the null page
        engine_args = dataclasses.replace(engine_args, num_pages=total)
    config = engine_args.create_engine_config()
    return LLM.from_engine(LLMEngine(config, model, tok)), ids
