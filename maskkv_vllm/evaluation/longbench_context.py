"""How long a LongBench prompt may be: the checkpoint's length, the engine's limit,
and the per-task truncation budget that keeps prompt + canvas inside them.

The default budget of a task is what is left of the engine's ``max_model_len``
(the checkpoint's ``max_sequence_length``, times ``rope_scaling`` when the NTK
factor is given with a matching ``max_model_len``) after the task's canvas
(``gen_length``) and the tokens the chat template adds: 4096 - 32 - template for
LLaDA on hotpotqa. LongBench's own ``pred.py`` sets one length per model by hand
(7500 for its 8K models); a fixed 7500 made every LLaDA run stop at the first
prompt longer than 4096 - ``gen_length`` tokens, which the engine refuses.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class EngineFacts:
    """What the LongBench runner needs to know of the engine it drives."""

    max_sequence_length: int
    """Length the checkpoint was trained at (config.json)."""
    rope_scaling: float
    """NTK factor on ``rope_theta`` (1.0: none)."""
    max_model_len: int
    """Longest prompt + canvas the engine accepts."""
    kv_policy: str
    """Policy of requests that choose none."""
    kv_budget: int | None
    """Budget of evicting requests that choose none."""
    canvas_cache: str
    """Canvas cache of requests that choose none."""
    prompt_refresh_interval: int | None
    """Steps between prompt-KV recomputations (None: never)."""

    @property
    def checkpoint_limit(self) -> int:
        """``max_sequence_length x rope_scaling``: the positions the model can use."""
        return int(self.max_sequence_length * self.rope_scaling)

    def as_dict(self) -> dict[str, Any]:
        return {
            "max_sequence_length": self.max_sequence_length,
            "rope_scaling": self.rope_scaling,
            "checkpoint_limit": self.checkpoint_limit,
            "max_model_len": self.max_model_len,
        }


def engine_facts(llm) -> EngineFacts:
    """The ``EngineFacts`` of an ``LLM`` (read from ``llm.engine``: its config,
    its model's config and its model runner's ``max_model_len``, as the OpenAI
    server reads it)."""
    engine = llm.engine
    config = engine.config
    return EngineFacts(
        max_sequence_length=engine.model.config.max_sequence_length,
        rope_scaling=config.rope_scaling,
        max_model_len=engine.model_runner.max_model_len,
        kv_policy=config.kv_policy,
        kv_budget=config.kv_budget,
        canvas_cache=config.canvas_cache,
        prompt_refresh_interval=config.cache.prompt_refresh_interval,
    )


def warn_if_unscaled(facts: EngineFacts) -> None:
    """Log when the engine accepts less than the RoPE-scaled checkpoint could use
    (a smaller ``max_model_len`` given by hand), so prompts are cut to it."""
    if facts.max_model_len < facts.checkpoint_limit:
        logger.warning(
            "longbench: the engine accepts max_model_len=%d, less than "
            "max_sequence_length %d x rope_scaling %s = %d; prompts are cut to fit "
            "%d (pass max_model_len=%d to use the scaled length)",
            facts.max_model_len,
            facts.max_sequence_length,
            facts.rope_scaling,
            facts.checkpoint_limit,
            facts.max_model_len,
            facts.checkpoint_limit,
        )


def checkpoint_max_len(model: str | Path, rope_scaling: float) -> int:
    """``max_sequence_length x rope_scaling`` read from a checkpoint's config.json
    (a directory or a built-in name), before any weights are loaded."""
    from maskkv_vllm.models.builtin import resolve_model
    from maskkv_vllm.models.config_json import read_config_json
    from maskkv_vllm.models.loader import architecture_of

    raw = read_config_json(resolve_model(model) / "config.json")
    config = architecture_of(raw).config_cls.from_dict(raw)
    return int(config.max_sequence_length * rope_scaling)


def prompt_budget(
    task: str,
    room: int,
    overhead: int,
    facts: EngineFacts,
    explicit: int | None,
) -> int:
    """Tokens a task's filled template may keep before middle truncation.

    Args:
        room: ``max_model_len - gen_length``: tokens left for the whole prompt.
        overhead: tokens the chat template (or the BOS) adds around the text.
        explicit: the user's ``max_prompt_tokens`` (None: the default, ``room -
            overhead``).

    Raises:
        ValueError: ``explicit`` leaves no room for the canvas. An error, not a
            warning: as vLLM refuses a ``max_model_len`` above what the model
            supports, a setting that cannot be served fails before anything runs,
            rather than hours later at the first long prompt or, cut silently,
            with numbers for a length nobody asked for.
    """
    fits = room - overhead
    if explicit is None:
        if fits < 2:
            raise ValueError(
                f"{task}: max_model_len={facts.max_model_len} leaves {room} tokens "
                f"beside the canvas, {overhead} of them the template's"
            )
        return fits
    if explicit > fits:
        raise ValueError(
            f"max_prompt_tokens={explicit} does not fit {task}: with {overhead} "
            f"template tokens and the canvas it exceeds max_model_len="
            f"{facts.max_model_len} (max_sequence_length {facts.max_sequence_length}"
            f" x rope_scaling {facts.rope_scaling}); use at most {fits}, or leave "
            "it unset to take the checkpoint's length"
        )
    return explicit
