"""``maskkv profile``: calibrate MaskKV's layer-importance profile."""

from __future__ import annotations

import argparse
import json

from maskkv_vllm.cli.command import add_command
from maskkv_vllm.engine.engine_args import EngineArgs


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    prof = add_command(
        subparsers, "profile", "calibrate MaskKV's layer-importance profile"
    )
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
