"""The class names vLLM resolves from strings name our classes."""

from __future__ import annotations

import importlib

import pytest

pytest.importorskip("vllm")

pytestmark = pytest.mark.vllm


def test_the_validator_s_name_resolves_to_the_validator():
    from maskkv_vllm.vllm_adapter import qualnames
    from maskkv_vllm.vllm_adapter.entrypoints import validation

    module, _, name = qualnames.VALIDATOR_CLS.partition(":")
    resolved = getattr(importlib.import_module(module), name)
    assert resolved is validation.MaskKVParamsValidator
    # The front ends still take the name from the validator's module.
    assert validation.VALIDATOR_CLS == qualnames.VALIDATOR_CLS
