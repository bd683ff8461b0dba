"""``maskkv eval``: accuracy of every policy at budgets from ~1% to ~25% of the prompt,
on held-out samples of the synthetic tasks, as a table, JSON and a PNG plot."""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path

from maskkv_vllm.engine.llm import LLM
from maskkv_vllm.evaluation.synthetic import (
    MULTI_QUERIES,
    TASKS,
    Sample,
    exact_match,
    make_samples,
)
from maskkv_vllm.sampling_params import SamplingParams

logger = logging.getLogger(__name__)

POLICIES = (
    "maskkv",
    "snapkv",
    "pyramidkv",
    "adakv",
    "squeezeattention",
    "streaming",
    "random",
    # Ablations (issue 26): mask voting with uniform budgets, SnapKV whose
    # window runs through the mask tokens, and MaskKV whose voters include the
    # last prompt token (the row Dream reads the answer's first token from).
    "maskvote",
    "snapkv-mask-window",
    "maskkv-query",
)
ABLATIONS = ("maskvote", "snapkv-mask-window", "maskkv-query")
FRACTIONS = (0.01, 0.02, 0.05, 0.1, 0.25)
HELD_OUT_SEED = 1_000_003
"""Evaluation samples come from this seed; training draws from ``random.Random(0)``
streams, so the haystacks differ (keys and digits are re-drawn per sample)."""


SOLVED_AT = 0.5
"""A task counts when the full cache answers at least this share of its samples:
retention is measured against what the model can do, not against a task it never
learnt (``vt`` on a model with one content-lookup layer scores 0 with every policy)."""


@dataclass
class EvalResult:
    """Accuracy per (policy, budget fraction), plus the full-cache reference, over
    the samples of the tasks the full cache solves."""

    prompt_tokens: int
    num_samples: int
    """Samples scored: those of the solved tasks."""
    full_accuracy: float
    """The full cache's accuracy over the scored samples."""
    per_task_full: dict[str, float]
    """The full cache's accuracy per task, every task drawn."""
    accuracy: dict[str, dict[float, float]] = field(default_factory=dict)
    budgets: dict[float, int] = field(default_factory=dict)
    """Budget B (entries per head per layer) used for each fraction."""
    solved_at: float = 0.0
    """Tasks whose full-cache accuracy is below this were not scored."""
    full_answers: list[str] = field(default_factory=list)
    """The full cache's answer text per scored sample, in sample order."""
    answers: dict[str, dict[float, list[str]]] = field(default_factory=dict)
    """Each (policy, budget fraction)'s answer texts, as ``full_answers``: what
    two runs' token agreement is measured on (``evaluation/agreement.py``)."""
    canvas: dict[str, int] = field(default_factory=dict)
    """The answer canvas every row ran: gen_length, block_length and steps."""
    drawn: dict = field(default_factory=dict)
    """What ``make_samples`` drew (samples, tasks, queries; with the prompt length
    and ``HELD_OUT_SEED``, enough to draw the same samples again)."""

    @property
    def solved_tasks(self) -> list[str]:
        return [t for t, a in self.per_task_full.items() if a >= self.solved_at]

    def retention(self, policy: str, fraction: float) -> float:
        if self.full_accuracy == 0:
            return 0.0
        return self.accuracy[policy][fraction] / self.full_accuracy

    def to_json(self) -> dict:
        return {
            "prompt_tokens": self.prompt_tokens,
            "num_samples": self.num_samples,
            "solved_at": self.solved_at,
            "solved_tasks": self.solved_tasks,
            "full_accuracy": self.full_accuracy,
            "per_task_full": self.per_task_full,
            "canvas": self.canvas,
            "drawn": self.drawn,
            "budgets": {str(f): b for f, b in self.budgets.items()},
            "accuracy": {
                p: {str(f): a for f, a in accs.items()}
                for p, accs in self.accuracy.items()
            },
            "answers": {
                "full": self.full_answers,
                **{p: {str(f): a for f, a in by.items()}
                   for p, by in self.answers.items()},
            },
        }  # fmt: skip


def scored_samples(run: dict) -> list[Sample]:
    """The samples an eval.json scored, in its answer order, drawn again from what
    it records.

    Raises:
        ValueError: eval.json records no ``drawn`` or ``canvas``, or the draw
            does not give as many scored samples as it scored.
    """
    if "drawn" not in run or "canvas" not in run:
        raise ValueError("eval.json records no drawn samples or canvas (a run from "
                         "before 2026-12-07): run maskkv eval again")  # fmt: skip
    drawn = run["drawn"]
    samples = make_samples(HELD_OUT_SEED, drawn["samples"], run["prompt_tokens"],
                           tuple(drawn["tasks"]), drawn["queries"])  # fmt: skip
    scored = [s for s in samples if s.task in run["solved_tasks"]]
    if len(scored) != run["num_samples"]:
        raise ValueError(f"drew {len(scored)} scored samples, eval.json scored "
                         f"{run['num_samples']}")  # fmt: skip
    return scored


def wilson_interval(accuracy: float, n: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson score interval of a proportion measured on ``n`` samples (sound at
    0% and 100%, unlike the normal approximation)."""
    if n <= 0:
        return 0.0, 1.0
    centre = (accuracy + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(accuracy * (1 - accuracy) / n + z * z / (4 * n * n))
    half /= 1 + z * z / n
    return max(0.0, centre - half), min(1.0, centre + half)


def canvas_params(
    samples: list[Sample], gen_length: int | None, block_length: int | None
) -> dict[str, int]:
    """gen_length, block_length and steps (one token a step) for ``samples``.

    Raises:
        ValueError: a given ``gen_length`` too short for the longest answer and
            its EOS, or not whole blocks.
    """
    need = max(len(s.answer.split()) for s in samples) + 1
    if gen_length is None:
        gen_length = max(8, need)
        if block_length is not None:
            gen_length = -(-gen_length // block_length) * block_length
    elif gen_length < need:
        raise ValueError(
            f"gen_length={gen_length} cannot hold the longest answer "
            f"({need - 1} words and its EOS)"
        )
    block = gen_length if block_length is None else block_length
    if gen_length % block:
        raise ValueError(
            f"gen_length={gen_length} is not whole blocks of block_length={block}"
        )
    return {"gen_length": gen_length, "block_length": block, "steps": gen_length}


def answer_texts(llm: LLM, samples: list[Sample], params: SamplingParams) -> list[str]:
    outs = llm.generate([s.prompt for s in samples], params, use_tqdm=False)
    return [o.text for o in outs]


def hits_of(texts: list[str], samples: list[Sample]) -> list[bool]:
    return [exact_match(t, s.answer) for t, s in zip(texts, samples, strict=True)]


def score(llm: LLM, samples: list[Sample], params: SamplingParams) -> list[bool]:
    return hits_of(answer_texts(llm, samples, params), samples)


def evaluate(
    llm: LLM,
    num_samples: int = 64,
    prompt_tokens: int = 1024,
    policies: tuple[str, ...] = POLICIES,
    fractions: tuple[float, ...] = FRACTIONS,
    gen_length: int | None = None,
    progress=None,
    solved_at: float = SOLVED_AT,
    tasks: tuple[str, ...] = TASKS,
    queries: int = MULTI_QUERIES,
    block_length: int | None = None,
) -> EvalResult:
    """Greedy, one token per step (the paper's setting); ``num_samples`` drawn
    evenly from ``tasks``, the policies scored on those of the tasks the full
    cache solves (``solved_at``; 0 scores every task).

    Args:
        gen_length: the canvas; None: the longest answer plus its EOS, at
            least 8, rounded up to whole diffusion blocks.
        queries: keys a ``multi`` prompt asks for (its answer spans blocks).
        block_length: the diffusion block; None: one block, the canvas.
    """
    if not 0 <= solved_at <= 1:
        raise ValueError(f"solved_at={solved_at} must be within [0, 1]")
    samples = make_samples(HELD_OUT_SEED, num_samples, prompt_tokens, tasks, queries)
    base = canvas_params(samples, gen_length, block_length)
    full_texts = answer_texts(llm, samples, SamplingParams(**base, kv_policy="full"))
    full = hits_of(full_texts, samples)
    per_task = {}
    for task in sorted({s.task for s in samples}):
        hits = [h for h, s in zip(full, samples, strict=True) if s.task == task]
        per_task[task] = sum(hits) / len(hits)
    kept = [i for i, s in enumerate(samples) if per_task[s.task] >= solved_at]
    if not kept:
        raise ValueError(
            f"the full cache solves no task at solved_at={solved_at} "
            f"({', '.join(f'{t} {a:.2f}' for t, a in per_task.items())})"
        )
    samples = [samples[i] for i in kept]
    full_accuracy = sum(full[i] for i in kept) / len(kept)
    result = EvalResult(
        prompt_tokens, len(samples), full_accuracy, per_task, solved_at=solved_at,
        full_answers=[full_texts[i] for i in kept], canvas=base,
        drawn={"samples": num_samples, "tasks": list(tasks), "queries": queries},
    )  # fmt: skip
    for fraction in fractions:
        result.budgets[fraction] = max(1, round(fraction * prompt_tokens))
    for policy in policies:
        result.accuracy[policy], result.answers[policy] = {}, {}
        for fraction in fractions:
            params = SamplingParams(
                **base, kv_policy=policy, kv_budget=result.budgets[fraction]
            )
            texts = answer_texts(llm, samples, params)
            hits = hits_of(texts, samples)
            result.accuracy[policy][fraction] = sum(hits) / len(hits)
            result.answers[policy][fraction] = texts
            if progress is not None:
                progress.update(1)
    return result


def format_table(result: EvalResult) -> str:
    fr = sorted(result.budgets)
    head = f"{'policy':>18} | " + " | ".join(
        f"{f'{100 * f:.2g}% B={result.budgets[f]}':>22}" for f in fr
    )
    n = result.num_samples
    lo, hi = wilson_interval(result.full_accuracy, n)
    skipped = [t for t in result.per_task_full if t not in result.solved_tasks]
    lines = [
        f"{n} held-out samples of {', '.join(result.solved_tasks)}, prompts "
        f"~{result.prompt_tokens} tokens; full cache accuracy "
        f"{result.full_accuracy:.3f} [{lo:.2f}, {hi:.2f}] "
        f"({', '.join(f'{t} {a:.3f}' for t, a in result.per_task_full.items())})",
        *(
            [f"not scored (full cache below {result.solved_at}): {', '.join(skipped)}"]
            if skipped
            else []
        ),
    ]
    if result.accuracy:  # no policy named: the full cache's line alone
        lines += [
            "accuracy [95% Wilson interval] (retention vs full cache)",
            head,
            "-" * len(head),
        ]
    for policy, accs in result.accuracy.items():
        cells = []
        for f in fr:
            lo, hi = wilson_interval(accs[f], n)
            retained = 100 * result.retention(policy, f)
            cells.append(f"{accs[f]:.2f} [{lo:.2f},{hi:.2f}] ({retained:>3.0f}%)")
        lines.append(f"{policy:>18} | " + " | ".join(f"{c:>22}" for c in cells))
    return "\n".join(lines)


def save_plot(result: EvalResult, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    fr = sorted(result.budgets)
    for policy, accs in result.accuracy.items():
        style = {"linewidth": 2.5 if policy == "maskkv" else 1.2}
        if policy in ABLATIONS:
            style["linestyle"] = ":"
        ax.plot([100 * f for f in fr], [accs[f] for f in fr], marker="o",
                label=policy, **style)  # fmt: skip
    ax.axhline(result.full_accuracy, color="black", linestyle="--", label="full cache")
    ax.set_xscale("log")
    ax.set_xlabel("KV budget per head (% of prompt)")
    ax.set_ylabel("exact-match accuracy")
    ax.set_title(title)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_outputs(result: EvalResult, out_dir: Path, title: str) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "eval.json").write_text(json.dumps(result.to_json(), indent=2))
    (out_dir / "eval.txt").write_text(format_table(result) + "\n")
    save_plot(result, out_dir / "eval.png", title)
