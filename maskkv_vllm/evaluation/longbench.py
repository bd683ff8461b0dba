"""LongBench (v1) runner: official prompts and truncation, LLaDA sampling, scoring,
and each eviction policy's retention against the same run's full cache.

For users who have the LongBench data as ``{data_dir}/{task}.jsonl`` files (rows
with ``input``, ``context``, ``answers``, ``all_classes``, ``length``,
``dataset``, ``language``, ``_id``) and a real LLaDA checkpoint::

    maskkv longbench --model /ckpt/LLaDA-8B-Instruct --data-dir LongBench/data \\
        --policies maskkv snapkv --kv-budget 256 --out results.json

or from Python::

    from maskkv_vllm.engine.llm import LLM
    from maskkv_vllm.evaluation.longbench import run_longbench
    llm = LLM("/ckpt", dtype="bfloat16", device="cuda", kv_cache_memory="16GiB")
    results = run_longbench(llm, "LongBench/data", ["qasper", "trec"])

How a prompt is built (as the official ``pred.py``): the task's template is
filled with the row; if its tokens (no special tokens) exceed the task's
``max_prompt_tokens``, the first and the last ``max_prompt_tokens // 2`` tokens
are decoded and joined (middle truncation); the text is then wrapped in LLaDA's
chat template, except for the few-shot and code tasks of ``NO_CHAT_TASKS``,
which get plain ``tokenizer.encode`` (BOS + text). By default ``max_prompt_tokens``
comes from the checkpoint (``longbench_context``): the engine's ``max_model_len``
(LLaDA: 4096, times ``--rope-scaling``) less the task's canvas and template
tokens, so every prompt fits; an explicit value that does not fit is an error
before anything runs.

How it is generated (the MaskKV paper's LLaDA setting): greedy low-confidence
remasking, semi-autoregressive blocks of ``block_length`` (8) tokens, one token
per step (``steps = gen_length``); ``gen_length`` is the task's official output
length rounded up to a multiple of ``block_length``. Every policy runs on the
same prompts with the same settings, ``full`` included (added when not asked
for), and retention is each policy's score over ``full``'s (``longbench_report``).

Known differences from the paper, recorded in every results file (``refresh``):
the paper ran every policy, its full cache included, on dLLM-Cache (prompt
refresh Tp = 50, answer refresh Tr = 5, adaptive partial refresh rho = 25%);
this engine has no dLLM-Cache, so its full cache is exact LLaDA (``canvas_cache``
"none", prompt KV computed once) or one of our canvas caches ("dual",
"dual_refresh"). Known differences from pred.py, by necessity: a diffusion model
fills a fixed canvas, so there is no ``max_new_tokens`` early stop, and samsum's
"stop at a newline" cannot be imposed (its first-line scoring rule does the same
job).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
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
from maskkv_vllm.evaluation.longbench_context import (
    EngineFacts,
    checkpoint_max_len,
    engine_facts,
    prompt_budget,
    warn_if_unscaled,
)
from maskkv_vllm.evaluation.longbench_metrics import (
    score_prediction,
    zh_tokenizer_name,
)
from maskkv_vllm.evaluation.longbench_report import (
    FULL,
    format_table,
    refresh_record,
    retention,
    run_refresh,
)
from maskkv_vllm.eviction.registry import check_budget, check_policy_name
from maskkv_vllm.sampling_params import SamplingParams

logger = logging.getLogger(__name__)

REQUIRED_FIELDS = ("context", "input", "answers")
DEFAULT_BLOCK_LENGTH = 8


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


def fit_prompt(
    tokenizer, task: str, prompt: str, max_prompt_tokens: int, room: int
) -> list[int]:
    """``encode_prompt``'s ids, cut further when they exceed ``room`` tokens.

    Re-tokenizing the two decoded halves, or the chat template around them, can
    give a few tokens more than counted; each retry lowers the budget by that
    overshoot, so the prompt and the canvas always fit ``max_model_len``.
    """
    budget = max_prompt_tokens
    while True:
        ids = encode_prompt(tokenizer, task, prompt, budget)
        excess = len(ids) - room
        if excess <= 0:
            return ids
        budget -= excess
        if budget < 2:
            raise ValueError(f"{task}: no prompt fits in {room} tokens")


@dataclasses.dataclass(frozen=True)
class TaskPlan:
    """How one task runs: its sampling per policy and its prompt lengths."""

    params: dict[str, SamplingParams]
    """Per policy, ``full`` first; the same but for the policy and its budget."""
    max_prompt_tokens: int
    """Middle-truncation budget of the filled template."""
    room: int
    """``max_model_len - gen_length``: tokens the whole prompt may take."""


def plan_task(
    tokenizer,
    task: str,
    sp: SamplingParams,
    facts: EngineFacts,
    explicit: int | None,
    policies: list[str],
) -> TaskPlan:
    """A task's ``TaskPlan``: ``prompt_budget`` with the task's canvas and its
    template's own tokens (ValueError when ``explicit`` does not fit)."""
    overhead = len(encode_prompt(tokenizer, task, "", 2))
    room = facts.max_model_len - sp.gen_length
    budget = prompt_budget(task, room, overhead, facts, explicit)
    params = {p: policy_params(sp, p, facts.kv_budget) for p in policies}
    return TaskPlan(params, budget, room)


def resolve_policies(
    policies: Sequence[str] | None, kv_policy: str | None, engine_default: str
) -> list[str]:
    """The policies to run, ``full`` first (added when absent: it is the
    reference of retention). None: ``kv_policy``, else the engine's default."""
    if policies is not None and kv_policy is not None:
        raise ValueError("give policies or kv_policy, not both")
    names = list(policies) if policies is not None else [kv_policy or engine_default]
    for name in names:
        check_policy_name(name)
    return [FULL, *dict.fromkeys(n for n in names if n != FULL)]


def policy_params(
    sp: SamplingParams, policy: str, engine_budget: int | None
) -> SamplingParams:
    """``sp`` for one policy (``full`` takes no budget); ValueError, before any
    run, when an evicting policy has no budget, neither its own nor the engine's."""
    budget = None if policy == FULL else sp.kv_budget
    check_budget(policy, engine_budget if budget is None else budget)
    return dataclasses.replace(sp, kv_policy=policy, kv_budget=budget)


def generate_samples(
    llm, task: str, rows, prompts, sp, batch_size, use_tqdm
) -> tuple[list[dict[str, Any]], float]:
    """Generate and score one task's prompts with one policy: (samples, seconds)."""
    step = batch_size or len(prompts)
    start = time.perf_counter()
    outputs: list[Any] = []
    for i in range(0, len(prompts), step):
        outputs += llm.generate(prompts[i : i + step], sp, use_tqdm=use_tqdm)
    elapsed = time.perf_counter() - start
    samples = [
        make_sample(task, row, ids, o)
        for row, ids, o in zip(rows, prompts, outputs, strict=True)
    ]
    return samples, elapsed


def make_sample(task: str, row: dict[str, Any], ids: list[int], o) -> dict[str, Any]:
    """One row's prediction, score and prompt length."""
    answers, classes = row["answers"], row.get("all_classes")
    sample = {
        "_id": row.get("_id"),
        "pred": o.text,
        "answers": answers,
        "score": score_prediction(task, o.text, answers, classes),
        "prompt_tokens": len(ids),
        "length": row.get("length"),
        "finish_reason": getattr(o, "finish_reason", None),
    }
    if getattr(o, "error", None):
        sample["error"] = o.error
    return sample


def record_run(run: dict[str, Any], task: str, samples, seconds: float) -> None:
    """Add one task's samples to a policy's run; refresh its average."""
    errors = sum("error" in s for s in samples)
    if errors:
        logger.warning("longbench: %s: %d request(s) ended with an error", task, errors)
    score = round(100 * sum(s["score"] for s in samples) / len(samples), 2)
    run["scores"][task] = score
    run["tasks"][task] = {
        "score": score,
        "num_errors": errors,
        "seconds": round(seconds, 3),
        "samples": samples,
    }
    scores = list(run["scores"].values())
    run["average"] = round(sum(scores) / len(scores), 2)


def task_info(task: str, sp: SamplingParams, budget: int, n: int) -> dict[str, Any]:
    """What a task's runs share: its metric, lengths and sample count."""
    cfg = task_config(task)
    return {
        "metric": cfg.metric,
        "num_samples": n,
        "chat_template": cfg.chat,
        "max_new_tokens": cfg.max_new_tokens,
        "max_prompt_tokens": budget,
        "gen_length": sp.gen_length,
        "steps": sp.steps,
    }


def new_results(
    config: dict[str, Any],
    facts: EngineFacts,
    params: dict[str, SamplingParams],
    policies: list[str],
) -> dict[str, Any]:
    """The results skeleton: the run's settings (``config`` plus the sampling
    settings every task shares), context limits, refresh settings beside the
    paper's, and an empty run per policy."""
    sp = next(iter(params.values()))
    settings = dataclasses.asdict(sp)
    for name in ("gen_length", "steps", "kv_policy"):  # per task or per policy
        del settings[name]
    this_run = run_refresh(
        sp.canvas_cache or facts.canvas_cache,
        facts.prompt_refresh_interval,
        sp.block_length,
        {n: {"gen_length": p.gen_length, "steps": p.steps} for n, p in params.items()},
    )
    return {
        "config": {**config, "policies": policies, **settings},
        "context": facts.as_dict(),
        "refresh": refresh_record(this_run),
        "tasks": {},
        "runs": {p: {"scores": {}, "average": None, "tasks": {}} for p in policies},
        "retention": {},
    }


def check_positive(**values: int | None) -> None:
    for name, value in values.items():
        if value is not None and value <= 0:
            raise ValueError(f"{name}={value} must be positive")


def run_task(llm, results, task: str, plan: TaskPlan, rows, batch_size, use_tqdm):
    """Fit the task's prompts once, then generate and score them with every
    policy of ``plan``, recording each run and the retention in ``results``."""
    prompts = [
        fit_prompt(
            llm.tokenizer,
            task,
            format_prompt(task, r),
            plan.max_prompt_tokens,
            plan.room,
        )
        for r in rows
    ]
    sp = plan.params[FULL]
    results["tasks"][task] = task_info(task, sp, plan.max_prompt_tokens, len(rows))
    for policy, params in plan.params.items():
        samples, seconds = generate_samples(
            llm, task, rows, prompts, params, batch_size, use_tqdm
        )
        record_run(results["runs"][policy], task, samples, seconds)
    results["retention"] = retention(results["runs"])


def run_longbench(
    llm,
    data_dir: str | Path,
    tasks: str | Sequence[str] | None = None,
    max_prompt_tokens: int | None = None,
    *,
    policies: Sequence[str] | None = None,
    steps_per_block: int | None = None,
    limit: int | None = None,
    batch_size: int | None = None,
    out: str | Path | None = None,
    use_tqdm: bool = False,
    **sampling: Any,
) -> dict[str, Any]:
    """Generate and score LongBench tasks with an ``LLM`` (or anything with a
    ``tokenizer``, an ``engine`` as ``engine_facts`` reads it, and
    ``generate(list_of_id_lists, SamplingParams, use_tqdm=)`` returning outputs
    with ``.text``).

    Args:
        max_prompt_tokens: middle-truncation budget of every task; None (the
            default) takes each task's from the checkpoint: ``max_model_len``
            minus the task's canvas and template tokens. A value that does not
            fit is a ValueError before anything runs (``prompt_budget``).
        policies: eviction policies to compare (None: ``kv_policy``, else the
            engine's default); ``full`` is always run too, on the same prompts
            and settings, and each other policy's retention against it reported.
        batch_size: rows given to ``generate`` at once (None: a whole task).
        out: results JSON, rewritten after every task.
        sampling: ``SamplingParams`` fields for every task
            (``task_sampling_params``); ``kv_budget`` None takes the engine's.

    Returns:
        ``{"config", "context" (the length limits), "refresh" (this run's refresh
        settings beside the paper's), "tasks" (per task: metric, lengths),
        "runs" ({policy: {"scores": {task: score}, "average", "tasks": per-sample
        predictions}}), "retention" ({policy: {"scores": {task: %}, "average":
        %}})}``; scores in [0, 100] as LongBench reports them.
    """
    names = resolve_tasks(tasks)
    check_positive(limit=limit, batch_size=batch_size)
    if max_prompt_tokens is not None:
        truncate_middle([], max_prompt_tokens)  # validates max_prompt_tokens
    for name in names:  # fail on a missing file before generating anything
        task_file(data_dir, name)
    facts = engine_facts(llm)
    warn_if_unscaled(facts)
    chosen = resolve_policies(
        policies, sampling.pop("kv_policy", None), facts.kv_policy
    )
    params = {
        n: task_sampling_params(
            task_config(n), steps_per_block=steps_per_block, **sampling
        )
        for n in names
    }
    # Every task's plan first: a setting that cannot run fails before any generation.
    plans = {
        n: plan_task(llm.tokenizer, n, sp, facts, max_prompt_tokens, chosen)
        for n, sp in params.items()
    }
    config = {
        "data_dir": str(data_dir),
        "tasks": names,
        "max_prompt_tokens": max_prompt_tokens,
        "limit": limit,
        "zh_tokenizer": zh_tokenizer_name(),
        "steps_per_block": steps_per_block,
    }
    results = new_results(config, facts, params, chosen)
    for name in names:
        rows = load_task(data_dir, name, limit)
        run_task(llm, results, name, plans[name], rows, batch_size, use_tqdm)
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
        default=None,
        help="middle-truncate longer prompts to this many tokens (default: per "
        "task, the checkpoint's max_model_len less the canvas and the template)",
    )
    p.add_argument(
        "--policies",
        nargs="+",
        default=None,
        help="eviction policies to compare (default: --kv-policy); full is run "
        "too, and each policy's retention against it reported",
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
    """The ``LLM`` of the parsed engine options. With ``--rope-scaling`` and no
    ``--max-model-len``, the engine accepts the scaled length (the checkpoint's
    ``max_sequence_length x rope_scaling``), not just the trained one."""
    from maskkv_vllm.engine.engine_args import EngineArgs
    from maskkv_vllm.engine.llm import LLM

    if args.max_model_len is None and args.rope_scaling != 1.0:
        scaled = checkpoint_max_len(args.model, args.rope_scaling)
        args = argparse.Namespace(**{**vars(args), "max_model_len": scaled})
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
        policies=args.policies,
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
