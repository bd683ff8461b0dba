"""A second vLLM general plugin for tests (as vLLM's ``vllm_add_dummy_model``).

``register()`` adds the architecture ``MaskKVDummyForCausalLM`` to vLLM's
``ModelRegistry`` as a lazy ``"module:Class"`` string; the class (OPT with its
logits shifted) is imported only if a checkpoint names it. Used by
``tests/vllm_adapter/test_plugins.py`` to show that this plugin and
``maskkv`` load side by side and that ``VLLM_PLUGINS`` selects between them.
"""

from __future__ import annotations

ARCHITECTURE = "MaskKVDummyForCausalLM"
MODEL_CLASS = "maskkv_dummy_model.model:MaskKVDummyForCausalLM"


def register() -> None:
    """Register the dummy architecture once (lazy, idempotent)."""
    from vllm import ModelRegistry

    if ARCHITECTURE not in ModelRegistry.get_supported_archs():
        ModelRegistry.register_model(ARCHITECTURE, MODEL_CLASS)
