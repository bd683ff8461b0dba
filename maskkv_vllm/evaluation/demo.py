"""``maskkv demo``: the product doing its job on the shipped ``retrieval`` model.

Held-out key-value prompts (``synthetic``'s ``kv`` task: a long haystack of
``kNNN : d d d ;`` records, then ``? kNNN``) are answered twice, with the full prompt
KV cache and with an evicting policy (MaskKV) keeping about ``fraction`` of it. Each
line shows the question, the expected answer, both answers, and how much prompt KV
each request kept, as the engine counted it (entries and pages after the first step).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from maskkv_vllm.engine.llm import LLM
from maskkv_vllm.evaluation.synthetic import exact_match, make_samples
from maskkv_vllm.sampling_params import SamplingParams

DEMO_SEED = 424_242
"""Prompts of a stream neither training nor ``maskkv eval`` draws from."""
GEN_LENGTH = 8


@dataclass(frozen=True)
class DemoConfig:
    """What the demo asks of the model."""

    prompt_tokens: int = 1024
    """Length of each prompt (about; whole records)."""
    fraction: float = 0.05
    """Share of the prompt KV the evicting policy keeps: B = fraction x tokens."""
    samples: int = 4
    """Prompts answered."""
    policy: str = "maskkv"
    """The evicting policy shown beside the full cache."""

    def __post_init__(self) -> None:
        if not isinstance(self.prompt_tokens, int) or self.prompt_tokens < 16:
            raise ValueError(f"prompt_tokens={self.prompt_tokens!r} must be >= 16")
        if not 0 < self.fraction <= 1:
            raise ValueError(f"fraction={self.fraction!r} must be in (0, 1]")
        if not isinstance(self.samples, int) or self.samples <= 0:
            raise ValueError(f"samples={self.samples!r} must be a positive int")

    @property
    def budget(self) -> int:
        """B, prompt entries kept per head per layer on average."""
        return max(1, round(self.fraction * self.prompt_tokens))


@dataclass(frozen=True)
class Answer:
    """One request's answer and the prompt KV it kept."""

    text: str
    correct: bool
    kept: int
    evicted: int
    pages: int

    @property
    def kept_fraction(self) -> float:
        return self.kept / max(1, self.kept + self.evicted)


def answer(llm: LLM, prompts: list[str], truths: list[str], params) -> list[Answer]:
    outs = llm.generate(prompts, params, use_tqdm=False)
    return [
        Answer(
            o.text.strip(),
            exact_match(o.text, truth),
            o.stats.kept_kv_entries,
            o.stats.evicted_kv_entries,
            o.stats.num_pages,
        )
        for o, truth in zip(outs, truths, strict=True)
    ]


def run(
    llm: LLM, cfg: DemoConfig, out: Callable[[str], None] = print
) -> dict[str, list[Answer]]:
    """Answer ``cfg.samples`` prompts with the full cache and with ``cfg.policy``;
    print a line per prompt and a summary. Returns the answers per mode."""
    samples = make_samples(DEMO_SEED, cfg.samples, cfg.prompt_tokens, ("kv",))
    prompts, truths = [s.prompt for s in samples], [s.answer for s in samples]
    base = {"gen_length": GEN_LENGTH, "block_length": GEN_LENGTH, "steps": GEN_LENGTH}
    full = answer(llm, prompts, truths, SamplingParams(**base, kv_policy="full"))
    evicting = SamplingParams(**base, kv_policy=cfg.policy, kv_budget=cfg.budget)
    kept = answer(llm, prompts, truths, evicting)
    tokens = len(llm.tokenizer.encode(prompts[0]))
    out(
        f"{cfg.samples} key-value prompts of ~{tokens} tokens "
        f"({prompts[0][:40]} ...), each answered with the full prompt KV cache "
        f"and with {cfg.policy} keeping B={cfg.budget} entries per head per layer"
    )
    for s, f, k in zip(samples, full, kept, strict=True):
        out(
            f"{s.prompt.split()[-2]} {s.prompt.split()[-1]}  expected {s.answer!r}: "
            f"full {f.text!r} {_mark(f)}; {cfg.policy} {k.text!r} {_mark(k)}, kept "
            f"{100 * k.kept_fraction:.1f}% of the prompt KV ({k.kept} of "
            f"{k.kept + k.evicted} entries, {k.pages} pages vs {f.pages})"
        )
    share = sum(k.kept for k in kept) / max(1, sum(f.kept for f in full))
    out(
        f"{cfg.policy}: {sum(k.correct for k in kept)}/{cfg.samples} correct keeping "
        f"{100 * share:.1f}% of the prompt KV; full cache: "
        f"{sum(f.correct for f in full)}/{cfg.samples}"
    )
    return {"full": full, cfg.policy: kept}


def _mark(a: Answer) -> str:
    return "correct" if a.correct else "WRONG"
