"""LLaDA configures its own vLLM engine: ``vllm serve CKPT`` needs no extra flag.

vLLM lets a model adjust the engine config it runs under: ``VllmConfig``'s
``__post_init__`` calls ``MODELS_CONFIG_MAP[architecture].verify_and_update_config``
(``vllm/model_executor/models/config.py``, how in-tree models such as the
DeepSeek ones set their own options), in the front end, before the platform
resolves its defaults. ``plugin.register`` adds ``LLaDAEngineConfig`` under
``LLaDAModelLM`` (a patch-ledger entry: the dict is vLLM's, not public API), so
for an LLaDA checkpoint, and only for it:

- ``scheduler_cls``: our ``MaskKVDiffusionScheduler`` (LLaDA's denoising loop)
  unless the user gave a subclass of it; any other scheduler is refused at
  model construction (``model._check_scheduler``);
- ``worker_cls``: our CPU or CUDA worker, by platform, when left on "auto";
- ``logits_processors``: + the front-end validator of per-request params;
- ``enforce_eager``: on (the denoising step is not CUDA-graph captured);
- ``block_size``: 32 on the CPU unless the user chose one (vLLM's CPU default
  is 128; smaller pages waste less per head);
- ``max_num_batched_tokens``: at least ``max_model_len``: chunked prefill is
  off for non-causal models, so a step must hold a whole prompt + canvas, and
  a request larger than the limit would wait forever.

Each change is logged once.
"""

from __future__ import annotations

import logging
from typing import Any

# Under "vllm." so that vLLM's log handler and level apply to our lines too.
logger = logging.getLogger(f"vllm.maskkv.{__name__.rsplit('.', 1)[-1]}")


class LLaDAEngineConfig:
    """``VerifyAndUpdateConfig`` of LLaDA (duck-typed: vLLM calls the two methods)."""

    @staticmethod
    def verify_and_update_model_config(model_config: Any) -> None:
        return None

    @staticmethod
    def verify_and_update_config(vllm_config: Any) -> None:
        for change in engine_changes(vllm_config):
            logger.info("maskkv: %s", change)


def engine_changes(vllm_config: Any) -> list[str]:
    """Apply LLaDA's engine settings to ``vllm_config``; what changed, in words."""
    from vllm.platforms import current_platform

    from maskkv_vllm.vllm_adapter.core.scheduler import SCHEDULER_CLS
    from maskkv_vllm.vllm_adapter.entrypoints.validation import VALIDATOR_CLS
    from maskkv_vllm.vllm_adapter.worker.selection import worker_cls_for

    changes = []
    sched = vllm_config.scheduler_config
    if sched.scheduler_cls is None or _is_vllm_default(sched.scheduler_cls):
        sched.scheduler_cls = SCHEDULER_CLS
        changes.append(f"scheduler_cls = {SCHEDULER_CLS}")
    parallel = vllm_config.parallel_config
    if parallel.worker_cls == "auto":
        parallel.worker_cls = worker_cls_for(current_platform)
        changes.append(f"worker_cls = {parallel.worker_cls}")
    model = vllm_config.model_config
    processors = list(model.logits_processors or [])
    if VALIDATOR_CLS not in processors:
        model.logits_processors = [*processors, VALIDATOR_CLS]
        changes.append(f"logits_processors += {VALIDATOR_CLS}")
    if not model.enforce_eager:
        model.enforce_eager = True
        changes.append("enforce_eager = True")
    cache = vllm_config.cache_config
    if current_platform.is_cpu() and not cache.user_specified_block_size:
        cache.block_size = 32
        cache.user_specified_block_size = True
        changes.append("block_size = 32")
    if sched.max_num_batched_tokens < model.max_model_len:
        changes.append(
            f"max_num_batched_tokens = {model.max_model_len} (was "
            f"{sched.max_num_batched_tokens}; a prompt + canvas is one step)"
        )
        sched.max_num_batched_tokens = model.max_model_len
    scheduled = sched.max_num_scheduled_tokens
    if scheduled is not None and scheduled < model.max_model_len:
        sched.max_num_scheduled_tokens = model.max_model_len
        changes.append(f"max_num_scheduled_tokens = {model.max_model_len}")
    return changes


def _is_vllm_default(cls: Any) -> bool:
    """vLLM's own scheduler classes, which decode autoregressively."""
    name = cls if isinstance(cls, str) else f"{cls.__module__}.{cls.__qualname__}"
    return name.startswith("vllm.")


def register_engine_config(architecture: str) -> None:
    """Put ``LLaDAEngineConfig`` into vLLM's per-architecture config hooks."""
    from vllm.model_executor.models.config import MODELS_CONFIG_MAP

    current = MODELS_CONFIG_MAP.get(architecture)
    if current is not None and current is not LLaDAEngineConfig:
        logger.warning(
            "architecture %s had config hook %s; maskkv replaces it",
            architecture, current,
        )  # fmt: skip
    MODELS_CONFIG_MAP[architecture] = LLaDAEngineConfig
