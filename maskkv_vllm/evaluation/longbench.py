"""LongBench (v1) runner: official prompts and truncation, LLaDA sampling, scoring.

For users who have the LongBench data as ``{data_dir}/{task}.jsonl`` files (rows
with ``input``, ``context``, ``answers``, ``all_classes``, ``length``,
``dataset``, ``language``, ``_id``) and a real LLaDA checkpoint::

    maskkv longbench --model /ckpt/LLaDA-8B-Instruct --data-dir LongBench/data \\
        --kv-policy maskkv --kv-budget 256 --out results.json

or from Python::

    from maskkv_vllm.engine.llm import LLM
    from maskkv_vllm.evaluation.longbench import run_longbench
    llm = LLM("/ckpt", dtype="bfloat16", device="cuda", kv_cache_memory="16GiB")
    results = run_longbench(llm, "LongBench/data", ["qasper", "trec"])

How a prompt is built (as the official ``pred.py``): the task's template is
filled with the row; if its tokens (no special tokens) exceed
``max_prompt_tokens``, the first and the last ``max_prompt_tokens // 2`` tokens
are decoded and joined (middle truncation); the text is then wrapped in LLaDA's
chat template, except for the few-shot and code tasks of ``NO_CHAT_TASKS``,
which get plain ``tokenizer.encode`` (BOS + text).

How it is generated (the MaskKV paper's LLaDA setting): greedy low-confidence
remasking, semi-autoregressive blocks of ``block_length`` (8) tokens, one token
per step (``steps = gen_length``); ``gen_length`` is the task's official output
length rounded up to a multiple of ``block_length``.

Known differences from pred.py, by necessity: a diffusion model fills a fixed
canvas, so there is no ``max_new_tokens`` early stop, and samsum's "stop at a
newline" cannot be imposed (its first-line scoring rule does the same job).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from maskkv_vllm.evaluation.longbench_config import (
    LONGBENCH_TASKS,
    PAPER_TASKS,
    TaskConfig,
    check_task,
    task_config,
)
from maskkv_vllm.evaluation.longbench_metrics import (
    score_prediction,
    zh_tokenizer_name,
)
from maskkv_vllm.sampling_params import SamplingParams

REQUIRED_FIELDS = ("context", "input", "answers")
DEFAULT_BLOCK_LENGTH = 8
DEFAULT_MAX_PROMPT_TOKENS = 7500


# --------------------------------------------------------------------- prompts


def truncate_middle(ids: Sequence[int], max_tokens: int) -> list[int]:
    """LongBench's middle truncation: keep the first and the last
    ``max_tokens // 2`` tokens when there are more than ``max_tokens``.

    (An odd ``max_tokens`` keeps ``max_tokens - 1`` tokens, as pred.py does.)
    """
    if max_tokens < 2:
        raise ValueError(f"max_prompt_tokens={max_tokens} must be at least 2")
    ids = list(ids)
    if len(ids) <= max_tokens:
        return ids
    half = max_tokens // 2
    return ids[:half] + ids[-half:]


def format_prompt(task: str, row: dict[str, Any]) -> str:
    """The official template of ``task`` filled with the row's fields."""
    cfg = task_config(task)
    try:
        return cfg.prompt.format(**row)
    except KeyError as e:
        raise ValueError(f"{task}: row has no field {e.args[0]!r}") from None


def encode_prompt(
    tokenizer, task: str, prompt: str, max_prompt_tokens: int
) -> list[int]:
    """Token ids of a filled prompt: middle-truncated, then chat-wrapped or not.

    ``tokenizer`` is a ``maskkv_vllm.models.tokenizer.Tokenizer`` (anything with
    ``encode(text, add_special_tokens=...)``, ``decode`` and ``encode_chat``).
    """
    cfg = task_config(task)
    ids = tokenizer.encode(prompt, add_special_tokens=False)
    if len(ids) > max_prompt_tokens:
        kept = truncate_middle(ids, max_prompt_tokens)
        half = len(kept) // 2
        # As pred.py: decode each half and join the texts (then re-tokenize).
        prompt = tokenizer.decode(kept[:half]) + tokenizer.decode(kept[half:])
    if cfg.chat:
        return tokenizer.encode_chat([{"role": "user", "content": prompt}])
    return tokenizer.encode(prompt)


def gen_length_for(max_new_tokens: int, block_length: int) -> int:
    """The task's output length rounded up to a multiple of ``block_length``."""
    if block_length <= 0:
        raise ValueError(f"block_length={block_length} must be positive")
    return math.ceil(max_new_tokens / block_length) * block_length


def task_sampling_params(
    cfg: TaskConfig, *, steps_per_block: int | None = None, **sampling: Any
) -> SamplingParams:
    """LLaDA sampling for one task: its output length rounded up to whole blocks,
    ``steps_per_block`` steps a block (None: one token a step).

    Args:
        sampling: any other ``SamplingParams`` field (``block_length`` default
            ``DEFAULT_BLOCK_LENGTH``, ``temperature``, ``kv_policy``, ...);
            ``gen_length`` and ``steps`` follow from the task.
    """
    for name in ("gen_length", "steps"):
        if name in sampling:
            raise ValueError(f"{name} follows from the task; pass steps_per_block")
    block_length = sampling.pop("block_length", DEFAULT_BLOCK_LENGTH)
    gen_length = gen_length_for(cfg.max_new_tokens, block_length)
    per_block = block_length if steps_per_block is None else steps_per_block
    return SamplingParams(
        gen_length=gen_length,
        block_length=block_length,
        steps=(gen_length // block_length) * per_block,
        **sampling,
    )


# ------------------------------------------------------------------------ data


def task_file(data_dir: str | Path, task: str) -> Path:
    check_task(task)
    path = Path(data_dir) / f"{task}.jsonl"
    if not path.is_file():
        raise ValueError(f"LongBench task {task!r}: no data file {path}")
    return path


def load_task(
    data_dir: str | Path, task: str, limit: int | None = None
) -> list[dict[str, Any]]:
    """The rows of ``{data_dir}/{task}.jsonl`` (the first ``limit`` ones)."""
    path = task_file(data_dir, task)
    rows: list[dict[str, Any]] = []
    with path.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if limit is not None and len(rows) >= limit:
                break
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{lineno}: not JSON ({e.msg})") from None
            if not isinstance(row, dict):
                raise ValueError(f"{path}:{lineno}: a row must be a JSON object")
            missing = [k for k in REQUIRED_FIELDS if k not in row]
            if missing:
                raise ValueError(f"{path}:{lineno}: row lacks {', '.join(missing)}")
            rows.append(row)
    if not rows:
        raise ValueError(f"{path} holds no rows")
    return rows


def resolve_tasks(tasks: str | Sequence[str] | None) -> list[str]:
    """Task names; None or "paper" is the paper's 14, "all" all 21 (checked)."""
    if tasks is None:
        return list(PAPER_TASKS)
    if isinstance(tasks, str):
        tasks = [tasks]
    out: list[str] = []
    for name in tasks:
        expanded = {"paper": PAPER_TASKS, "all": LONGBENCH_TASKS}.get(name, [name])
        out += [check_task(t) for t in expanded if t not in out]
    if not out:
        raise ValueError("no LongBench tasks given")
    return out


# ---------------------------------------------------------------------- runner


def run_longbench(
    llm,
    data_dir: str | Path,
    tasks: str | Sequence[str] | None = None,
    max_prompt_tokens: int = DEFAULT_MAX_PROMPT_TOKENS,
    *,
    steps_per_block: int | None = None,
    limit: int | None = None,
    batch_size: int | None = None,
    out: str | Path | None = None,
    use_tqdm: bool = False,
    **sampling: Any,
) -> dict[str, Any]:
    """Generate and score LongBench tasks with an ``LLM`` (or anything with a
    ``tokenizer`` and ``generate(list_of_id_lists, SamplingParams, use_tqdm=)``
    returning outputs with ``.text``).

    ``sampling``: ``SamplingParams`` fields for every task (``task_sampling_params``);
    ``kv_policy``/``kv_budget`` None take the engine's defaults. ``batch_size``
    rows go to ``generate`` at once (None: a whole task). With ``out``, the
    results JSON is rewritten after every task.

    Returns ``{"scores": {task: score}, "average": mean score, "tasks": {task:
    details and per-sample predictions}, "config": the settings}``; scores are in
    [0, 100] as LongBench reports them.
    """
    names = resolve_tasks(tasks)
    if limit is not None and limit <= 0:
        raise ValueError(f"limit={limit} must be positive")
    if batch_size is not None and batch_size <= 0:
        raise ValueError(f"batch_size={batch_size} must be positive")
    truncate_middle([], max_prompt_tokens)  # validates max_prompt_tokens
    for name in names:  # fail on a missing file before generating anything
        task_file(data_dir, name)
    params = {
        n: task_sampling_params(
            task_config(n), steps_per_block=steps_per_block, **sampling
        )
        for n in names
    }
    settings = dataclasses.asdict(params[names[0]])
    for name in ("gen_length", "steps"):  # per task
        del settings[name]
    results: dict[str, Any] = {
        "config": {
            "data_dir": str(data_dir),
            "tasks": names,
            "max_prompt_tokens": max_prompt_tokens,
            "limit": limit,
            "zh_tokenizer": zh_tokenizer_name(),
            "steps_per_block": steps_per_block,
            **settings,
        },
        "scores": {},
        "average": None,
        "tasks": {},
    }
    tokenizer = llm.tokenizer
    for name in names:
        cfg = task_config(name)
        rows = load_task(data_dir, name, limit)
        prompts = [
            encode_prompt(tokenizer, name, format_prompt(name, r), max_prompt_tokens)
            for r in rows
        ]
        sp = params[name]
        step = batch_size or len(prompts)
        start = time.perf_counter()
        outputs: list[Any] = []
        for i in range(0, len(prompts), step):
            outputs += llm.generate(prompts[i : i + step], sp, use_tqdm=use_tqdm)
        elapsed = time.perf_counter() - start
        samples = []
        for row, ids, o in zip(rows, prompts, outputs, strict=True):
            answers = row["answers"]
            classes = row.get("all_classes")
            sample = {
                "_id": row.get("_id"),
                "pred": o.text,
                "answers": answers,
                "score": score_prediction(name, o.text, answers, classes),
                "prompt_tokens": len(ids),
                "length": row.get("length"),
                "finish_reason": getattr(o, "finish_reason", None),
            }
            if getattr(o, "error", None):
                sample["error"] = o.error
            samples.append(sample)
        errors = sum("error" in s for s in samples)
        if errors:
            print(
                f"longbench: {name}: {errors} request(s) ended with an error",
                file=sys.stderr,
            )
        score = round(100 * sum(s["score"] for s in samples) / len(samples), 2)
        results["scores"][name] = score
        results["tasks"][name] = {
            "score": score,
            "metric": cfg.metric,
            "num_samples": len(samples),
            "num_errors": errors,
            "chat_template": cfg.chat,
            "max_new_tokens": cfg.max_new_tokens,
            "gen_length": sp.gen_length,
            "steps": sp.steps,
            "seconds": round(elapsed, 3),
            "samples": samples,
        }
        scores = list(results["scores"].values())
        results["average"] = round(sum(scores) / len(scores), 2)
        if out is not None:
            write_results(results, out)
    return results


def write_results(results: dict[str, Any], path: str | Path) -> None:
    path = Path(path)
    if path.parent != Path():
        path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(results, ensure_ascii=False, indent=2), "utf-8")
    tmp.replace(path)


def format_table(results: dict[str, Any]) -> str:
    width = max(len("average"), *(len(t) for t in results["scores"]))
    lines = [f"{t:<{width}}  {s:6.2f}" for t, s in results["scores"].items()]
    lines.append(f"{'average':<{width}}  {results['average']:6.2f}")
    return "\n".join(lines)


# ------------------------------------------------------------------------- CLI


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The ``maskkv longbench`` options (for wiring it as a subcommand): the engine's
    own (``EngineArgs``) and the benchmark's."""
    from maskkv_vllm.engine.engine_args import EngineArgs

    p.add_argument("--model", required=True, help="LLaDA checkpoint directory")
    EngineArgs.add_cli_args(p, model=False, skip=("max_queue_len",))
    p.set_defaults(max_num_seqs=4)
    p.add_argument("--data-dir", required=True, help="directory of {task}.jsonl")
    p.add_argument(
        "--tasks",
        nargs="+",
        default=list(PAPER_TASKS),
        help="task names, 'paper' (the MaskKV paper's 14, default) or 'all' (21)",
    )
    p.add_argument(
        "--max-prompt-tokens",
        type=int,
        default=DEFAULT_MAX_PROMPT_TOKENS,
        help="middle-truncate longer prompts to this many tokens",
    )
    p.add_argument("--limit", type=int, default=None, help="first N rows per task")
    p.add_argument("--out", default="results.json", help="results JSON path")
    p.add_argument("--block-length", type=int, default=DEFAULT_BLOCK_LENGTH)
    p.add_argument(
        "--steps-per-block",
        type=int,
        default=None,
        help="denoising steps per block (default: block length, 1 token/step)",
    )
    p.add_argument("--seed", type=int, default=0)


def build_llm(args: argparse.Namespace):
    """The ``LLM`` of the parsed engine options."""
    from maskkv_vllm.engine.engine_args import EngineArgs
    from maskkv_vllm.engine.llm import LLM

    return LLM.from_engine_args(EngineArgs.from_cli_args(args))


def run_from_args(args: argparse.Namespace) -> int:
    """Run the benchmark for parsed ``add_arguments`` options; print the table."""
    names = resolve_tasks(args.tasks)
    for name in names:  # before loading a checkpoint
        task_file(args.data_dir, name)
    llm = build_llm(args)
    results = run_longbench(
        llm,
        args.data_dir,
        names,
        args.max_prompt_tokens,
        steps_per_block=args.steps_per_block,
        limit=args.limit,
        out=args.out,
        use_tqdm=True,
        block_length=args.block_length,
        seed=args.seed,
    )
    print(format_table(results))
    print(f"wrote {args.out}")
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="maskkv longbench", description="Run and score LongBench (v1)."
    )
    add_arguments(p)
    args = p.parse_args(argv)
    try:
        return run_from_args(args)
    except (ValueError, FileNotFoundError) as e:
        print(f"maskkv longbench: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
