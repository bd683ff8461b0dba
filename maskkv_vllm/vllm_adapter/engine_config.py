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
- the V1 model runner: vLLM picks Model Runner V2 by default wherever Triton
  imports (every CUDA install); our runners subclass V1's. The choice is made on
  the config itself (``pin_v1_model_runner``), so every entry point and every
  process that receives the config (engine core, workers, Ray actors) sees it,
  whatever its environment; ``VLLM_USE_V2_MODEL_RUNNER=1`` still wins and is
  then refused by our worker with that name;
- ``async_scheduling``: off. CUDA leaves it on (the CPU platform turns it
  off): the engine core then keeps a step in flight while it schedules the
  next, but a denoising step's output decides the next canvas, so every other
  engine step ran empty and requests left and re-entered the persistent batch;
- ``enforce_eager``: on (the denoising step is not CUDA-graph captured);
- ``block_size``: 32 on the CPU unless the user chose one (vLLM's CPU default
  is 128; smaller pages waste less per head);
- ``kv_cache_memory_bytes``: 1 GiB on the CPU when nothing sizes the pool
  (no ``--kv-cache-memory-bytes``, no ``VLLM_CPU_KVCACHE_SPACE``, and
  ``--gpu-memory-utilization`` at vLLM's 0.92): vLLM's CPU worker would
  otherwise reserve 92% of the host's RAM and refuse to start on any machine
  where other processes hold more than 8% (the embedded engine's CPU default
  is 1 GiB too);
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
        logger.info("maskkv: %s", dtype_line(vllm_config.model_config))


def engine_changes(vllm_config: Any, platform: Any = None) -> list[str]:
    """Apply LLaDA's engine settings to ``vllm_config``; what changed, in words.

    Args:
        platform: vLLM's ``current_platform`` unless given (tests pass stand-ins).
    """
    from maskkv_vllm.vllm_adapter.core.scheduler import SCHEDULER_CLS
    from maskkv_vllm.vllm_adapter.qualnames import VALIDATOR_CLS
    from maskkv_vllm.vllm_adapter.worker.selection import worker_cls_for

    if platform is None:
        from vllm.platforms import current_platform as platform
    changes = []
    note_engine(vllm_config)
    sched = vllm_config.scheduler_config
    if sched.scheduler_cls is None or _is_vllm_default(sched.scheduler_cls):
        sched.scheduler_cls = SCHEDULER_CLS
        changes.append(f"scheduler_cls = {SCHEDULER_CLS}")
    parallel = vllm_config.parallel_config
    if parallel.worker_cls == "auto":
        parallel.worker_cls = worker_cls_for(platform)
        changes.append(f"worker_cls = {parallel.worker_cls}")
    model = vllm_config.model_config
    processors = list(model.logits_processors or [])
    if VALIDATOR_CLS not in processors:
        model.logits_processors = [*processors, VALIDATOR_CLS]
        changes.append(f"logits_processors += {VALIDATOR_CLS}")
    if pin_v1_model_runner(vllm_config):
        changes.append("model runner = V1 (LLaDA's denoising runner subclasses it)")
    if sched.async_scheduling is not False:
        if sched.async_scheduling:
            logger.warning(
                "maskkv: async scheduling is not supported for LLaDA (a denoising "
                "step decides the next canvas); running with it off"
            )
        sched.async_scheduling = False
        changes.append("async_scheduling = False")
    if not model.enforce_eager:
        model.enforce_eager = True
        changes.append("enforce_eager = True")
    cache = vllm_config.cache_config
    if platform.is_cpu() and not cache.user_specified_block_size:
        cache.block_size = 32
        cache.user_specified_block_size = True
        changes.append("block_size = 32")
    if platform.is_cpu() and _pool_left_to_vllm_s_default(cache):
        cache.kv_cache_memory_bytes = CPU_KV_CACHE_BYTES
        changes.append(
            "kv_cache_memory_bytes = 1 GiB (the CPU pool; vLLM's default would "
            "reserve 92% of host RAM: set VLLM_CPU_KVCACHE_SPACE=GiB or "
            "--kv-cache-memory-bytes for another size)"
        )
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


def note_engine(vllm_config: Any) -> None:
    """Give the front-end check (``params.ENGINE``) the engine's shape, and
    refuse an engine default it cannot run (``params.check_engine_fit``).

    Raises:
        ValueError: ``additional_config["maskkv"]`` asks for what this engine
            cannot run, at startup rather than at the first request.
    """
    from maskkv_vllm.sampling_params import SamplingParams
    from maskkv_vllm.vllm_adapter.params import (
        ENGINE,
        AdapterConfig,
        check_engine_fit,
    )

    tp = getattr(vllm_config.parallel_config, "tensor_parallel_size", 1)
    ENGINE["tensor_parallel_size"] = tp
    additional = getattr(vllm_config, "additional_config", None)
    adapter = AdapterConfig.from_additional_config(additional)
    check_engine_fit(SamplingParams(canvas_cache=adapter.canvas_cache), tp)


def dtype_line(model_config: Any) -> str:
    """What the model computes in, beside what its weights are stored in: vLLM's
    CPU default runs a float32 checkpoint in bfloat16, the embedded engine in
    float32, so the two can differ on near-ties (``--dtype float32`` to match)."""
    hf = model_config.hf_config
    stored = getattr(hf, "torch_dtype", None) or getattr(hf, "dtype", None)
    return f"LLaDA runs in {model_config.dtype} (checkpoint weights: {stored})"


CPU_KV_CACHE_BYTES = 1 << 30
"""The CPU pool when the user sized nothing (the embedded engine's default)."""


def _pool_left_to_vllm_s_default(cache: Any) -> bool:
    """Whether nothing the user set sizes the KV pool (the CPU platform reads
    ``VLLM_CPU_KVCACHE_SPACE`` after this hook, so it is checked here)."""
    import os

    from vllm.config.cache import CacheConfig

    return (
        cache.kv_cache_memory_bytes is None
        and not os.environ.get("VLLM_CPU_KVCACHE_SPACE")
        and cache.gpu_memory_utilization == CacheConfig.gpu_memory_utilization
    )


V2_UNSUPPORTED = "LLaDA diffusion denoising (maskkv: its runners subclass V1's)"
"""The reason vLLM logs when it falls back to the V1 model runner for LLaDA."""


def _v2_unsupported_features() -> list[str]:
    """Stands in for ``VllmConfig._get_v2_model_runner_unsupported_features``.

    Module-level, so a config carrying it pickles (by reference) into the
    engine-core, worker and Ray processes.
    """
    return [V2_UNSUPPORTED]


def pin_v1_model_runner(vllm_config: Any) -> bool:
    """Make ``vllm_config.use_v2_model_runner`` answer False; True if it changed.

    vLLM's ``use_v2_model_runner`` is a property computed on every read from
    the environment, Triton's presence and
    ``_get_v2_model_runner_unsupported_features()`` (a method, which an
    instance attribute shadows): a non-empty list there selects V1 wherever
    the config goes. An explicit ``VLLM_USE_V2_MODEL_RUNNER`` is read first and
    still decides (patch ledger: ``patches/README.md``).
    """
    name = "_get_v2_model_runner_unsupported_features"
    if vars(vllm_config).get(name) is _v2_unsupported_features:
        return False
    object.__setattr__(vllm_config, name, _v2_unsupported_features)
    return True


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
