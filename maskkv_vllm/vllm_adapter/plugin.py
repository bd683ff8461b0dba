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

DREAM_ARCHITECTURE = "DreamModel"
"""``architectures[0]`` in Dream checkpoints' ``config.json``."""

DREAM_MODEL_CLASS = "maskkv_vllm.vllm_adapter.worker.dream_model:DreamForDiffusionLM"
"""Dream's model class, lazily as ``MODEL_CLASS``."""

MODEL_CLASSES = {ARCHITECTURE: MODEL_CLASS, DREAM_ARCHITECTURE: DREAM_MODEL_CLASS}
"""Every architecture the plugin serves -> its model class."""

_REGISTERED = False


def register() -> None:
    """Register LLaDA and Dream with transformers and vLLM (idempotent, lazy).

    Order: the HF config classes for ``model_type`` "llada" and "Dream" (so
    vLLM can parse ``config.json`` without ``trust_remote_code``), then per
    architecture the model class and its engine-config hook (``engine_config``:
    our scheduler, worker and limits).
    """
    global _REGISTERED
    if _REGISTERED:
        return
    check_vllm_version()
    _register_hf_configs()
    from maskkv_vllm.vllm_adapter.engine_config import register_engine_config

    for arch, model_class in MODEL_CLASSES.items():
        _register_architecture(arch, model_class)
        register_engine_config(arch)
        logger.debug("maskkv plugin registered %s -> %s", arch, model_class)
    _REGISTERED = True


def _register_hf_configs() -> None:
    from transformers import AutoConfig

    from maskkv_vllm.vllm_adapter.hf_config import (
        DREAM_MODEL_TYPE,
        MODEL_TYPE,
        DreamHFConfig,
        LLaDAConfig,
    )

    AutoConfig.register(MODEL_TYPE, LLaDAConfig, exist_ok=True)
    AutoConfig.register(DREAM_MODEL_TYPE, DreamHFConfig, exist_ok=True)


def _register_architecture(arch: str, model_class: str) -> None:
    from vllm import ModelRegistry

    if arch in ModelRegistry.get_supported_archs():
        current = _registered_class_path(ModelRegistry, arch)
        if current == model_class:
            return
        logger.warning(
            "architecture %s was registered as %s; maskkv replaces it with %s",
            arch,
            current,
            model_class,
        )
    ModelRegistry.register_model(arch, model_class)


def _registered_class_path(registry: object, arch: str) -> str | None:
    """``"module:Class"`` of a registered architecture (None if not lazy)."""
    entry = getattr(registry, "models", {}).get(arch)
    module = getattr(entry, "module_name", None)
    name = getattr(entry, "class_name", None)
    if module is None or name is None:
        return None
    return f"{module}:{name}"
