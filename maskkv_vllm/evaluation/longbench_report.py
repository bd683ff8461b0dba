"""What a LongBench run reports beside its scores: retention against the run's own
full-cache scores, and its refresh settings beside the MaskKV paper's.

Retention of a policy on a task is ``100 * score / full-cache score`` (None where
the full cache scores 0); overall it is the ratio of the two averages, as the
paper reports it ("Every retention percentage is relative to dLLM w/ Cache").
Both come from the same run: the same rows, prompts and sampling settings.

The paper ran every policy on dLLM-Cache (prompt refresh every Tp = 50 steps,
answer refresh every Tr = 5 steps, adaptive partial refresh of rho = 25% of the
answer tokens in between; ``maskkv-method.md`` sections 2 and 10). This engine has
no dLLM-Cache: its canvas caches are none / dual / dual_refresh and its prompt KV
is computed once unless ``prompt_refresh_interval`` is set, so the paper's "full
cache" and ours differ, and every run records both side by side.
"""

from __future__ import annotations

from typing import Any

FULL = "full"
"""The policy that keeps every prompt entry: the reference of retention."""

PAPER_REFRESH: dict[str, Any] = {
    "base_cache": "dLLM-Cache",
    "prompt_refresh_interval_Tp": 50,
    "answer_refresh_interval_Tr": 5,
    "adaptive_refresh_ratio_rho": 0.25,
    "block_length": 8,
    "gen_length": "LongBench's output length per task (32, 64, 128 or 512)",
    "steps": "gen_length (one token per step)",
    "remasking": "low_confidence, greedy (temperature not printed)",
    "prompt_entries_after_eviction": "not refreshed (the paper is silent; "
    "maskkv-method.md Q1)",
}
"""The MaskKV paper's decoding settings (arXiv 2510.09309), from our notes."""

CANVAS_REFRESH = {
    "none": "whole canvas recomputed every step",
    "dual": "canvas outside the current block cached, refreshed at block boundaries",
    "dual_refresh": "as dual, and prompt + canvas recomputed at block boundaries",
}
"""What each of our ``canvas_cache`` values refreshes, in words."""


def run_refresh(
    canvas_cache: str,
    prompt_refresh_interval: int | None,
    block_length: int,
    lengths: dict[str, dict[str, int]],
) -> dict[str, Any]:
    """The refresh settings this run used.

    Args:
        lengths: ``{task: {"gen_length": L, "steps": S}}``.
    """
    return {
        "base_cache": "maskkv_vllm prompt KV cache (no dLLM-Cache)",
        "canvas_cache": canvas_cache,
        "canvas_refresh": CANVAS_REFRESH[canvas_cache],
        "prompt_refresh_interval": prompt_refresh_interval,
        "block_length": block_length,
        "tasks": lengths,
    }


def refresh_record(this_run: dict[str, Any]) -> dict[str, Any]:
    """This run's refresh settings and the paper's, side by side."""
    return {
        "this_run": this_run,
        "paper": PAPER_REFRESH,
        "note": "the engine has no dLLM-Cache: scores and retention are not "
        "measured under the paper's refresh schedule",
    }


def ratio(score: float, reference: float) -> float | None:
    """``100 * score / reference`` to 2 decimals; None when ``reference`` is 0."""
    if reference == 0:
        return None
    return round(100 * score / reference, 2)


def retention(runs: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Each non-full policy's retention per task and overall.

    Args:
        runs: ``{policy: {"scores": {task: score}, "average": score}}``, with
            ``FULL`` among them; tasks missing from a run (not yet done) are
            skipped.

    Returns:
        ``{policy: {"scores": {task: percent}, "average": percent}}``.
    """
    full = runs[FULL]
    out: dict[str, dict[str, Any]] = {}
    for policy, run in runs.items():
        if policy == FULL:
            continue
        tasks = [t for t in run["scores"] if t in full["scores"]]
        scores = {t: ratio(run["scores"][t], full["scores"][t]) for t in tasks}
        average = None
        if tasks and run["average"] is not None and full["average"] is not None:
            average = ratio(run["average"], full["average"])
        out[policy] = {"scores": scores, "average": average}
    return out


def _cell(value: float | None) -> str:
    return f"{value:.2f}" if value is not None else "-"


def _aligned(rows: list[list[str]]) -> list[str]:
    """Rows of cells as lines: the first column left-aligned, the rest right."""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return [
        r[0].ljust(widths[0])
        + "".join(c.rjust(w + 2) for c, w in zip(r[1:], widths[1:], strict=True))
        for r in rows
    ]


def format_table(results: dict[str, Any]) -> str:
    """Scores per task and policy, each non-full policy's retention (%) beside,
    then the refresh settings of the run and of the paper."""
    columns = {**results["runs"]}
    columns.update({f"{p}/full %": r for p, r in results["retention"].items()})
    rows = [["task", *columns]]
    for task in results["runs"][FULL]["scores"]:
        rows.append([task, *(_cell(c["scores"].get(task)) for c in columns.values())])
    rows.append(["average", *(_cell(c["average"]) for c in columns.values())])
    return "\n".join([*_aligned(rows), *refresh_lines(results["refresh"])])


def refresh_lines(refresh: dict[str, Any]) -> list[str]:
    """Two lines: this run's refresh settings and the paper's."""
    run, paper = refresh["this_run"], refresh["paper"]
    interval = run["prompt_refresh_interval"]
    prompt = f"every {interval} steps" if interval else "never"
    return [
        f"this run: canvas_cache={run['canvas_cache']} ({run['canvas_refresh']}), "
        f"prompt KV refreshed {prompt}, block {run['block_length']}",
        f"paper: {paper['base_cache']} Tp={paper['prompt_refresh_interval_Tp']}, "
        f"Tr={paper['answer_refresh_interval_Tr']}, "
        f"rho={paper['adaptive_refresh_ratio_rho']}, block {paper['block_length']}"
        f" (our engine has no dLLM-Cache)",
    ]
