"""The ``vllm.general_plugins`` entry point: ``register()``.

vLLM calls ``register()`` once in every process it starts (front end, engine
core, each worker, the model-inspection subprocess); tests may call it again.
It is therefore lazy (vLLM and transformers are imported inside it, no device
is touched, the model class is registered by ``"module:Class"`` string) and
idempotent (a module flag plus a guard per registration).

vLLM calls the entry point outside any ``try`` (only importing it is guarded),
so an exception here would abort every vLLM process in the environment. A vLLM
version other than the pinned one is therefore logged, not raised: the two
registrations below use public API only.
"""

from __future__ import annotations

import logging

from maskkv_vllm.vllm_adapter.version import (  # noqa: F401 (the public names)
    SUPPORTED_VLLM_VERSION,
    check_vllm_version,
    installed_vllm_version,
    require_vllm_version,
)

logger = logging.getLogger(__name__)

ARCHITECTURE = "LLaDAModelLM"
"""``architectures[0]`` in LLaDA checkpoints' ``config.json``."""

MODEL_CLASS = "maskkv_vllm.vllm_adapter.worker.model:LLaDAForDiffusionLM"
"""The model class, as the lazy ``"module:Class"`` string vLLM imports on use."""

_REGISTERED = False


def register() -> None:
    """Register LLaDA with transformers and vLLM (idempotent, lazy).

    Order: the HF config class for ``model_type = "llada"`` (so vLLM can parse
    ``config.json`` without ``trust_remote_code``), the architecture, then its
    engine-config hook (``engine_config``: our scheduler, worker and limits).
    """
    global _REGISTERED
    if _REGISTERED:
        return
    check_vllm_version()
    _register_hf_config()
    _register_architecture()
    from maskkv_vllm.vllm_adapter.engine_config import register_engine_config

    register_engine_config(ARCHITECTURE)
    _REGISTERED = True
    logger.debug("maskkv plugin registered %s -> %s", ARCHITECTURE, MODEL_CLASS)


def _register_hf_config() -> None:
    from transformers import AutoConfig

    from maskkv_vllm.vllm_adapter.hf_config import MODEL_TYPE, LLaDAConfig

    AutoConfig.register(MODEL_TYPE, LLaDAConfig, exist_ok=True)


def _register_architecture() -> None:
    from vllm import ModelRegistry

    if ARCHITECTURE in ModelRegistry.get_supported_archs():
        current = _registered_class_path(ModelRegistry, ARCHITECTURE)
        if current == MODEL_CLASS:
            return
        logger.warning(
            "architecture %s was registered as %s; maskkv replaces it with %s",
            ARCHITECTURE,
            current,
            MODEL_CLASS,
        )
    ModelRegistry.register_model(ARCHITECTURE, MODEL_CLASS)


def _registered_class_path(registry: object, arch: str) -> str | None:
    """``"module:Class"`` of a registered architecture (None if not lazy)."""
    entry = getattr(registry, "models", {}).get(arch)
    module = getattr(entry, "module_name", None)
    name = getattr(entry, "class_name", None)
    if module is None or name is None:
        return None
    return f"{module}:{name}"
