"""register(): lazy, idempotent, and what it registers (no engine started)."""

from __future__ import annotations

import configparser
import logging
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest

pytest.importorskip("vllm")

from maskkv_vllm.vllm_adapter import plugin  # noqa: E402

pytestmark = pytest.mark.vllm

ROOT = Path(__file__).resolve().parents[2]
ENTRY_POINT = "maskkv_vllm.vllm_adapter.plugin:register"


def test_importing_the_plugin_imports_neither_vllm_nor_transformers():
    code = (
        "import sys, maskkv_vllm.vllm_adapter.plugin\n"
        "heavy = {'vllm', 'transformers', 'torch'} & sys.modules.keys()\n"
        "assert not heavy, heavy"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_register_is_idempotent_and_lazy():
    from vllm import ModelRegistry

    plugin.register()
    entry = ModelRegistry.models[plugin.ARCHITECTURE]
    archs = set(ModelRegistry.get_supported_archs())
    plugin.register()
    # Registering again changes nothing, even with the module flag cleared.
    plugin._REGISTERED = False
    plugin.register()
    assert plugin._REGISTERED
    assert set(ModelRegistry.get_supported_archs()) == archs
    assert ModelRegistry.models[plugin.ARCHITECTURE] is entry
    # A lazy "module:Class" entry: vLLM imports the model only when it is used.
    assert (entry.module_name, entry.class_name) == (
        "maskkv_vllm.vllm_adapter.worker.model",
        "LLaDAForDiffusionLM",
    )


def test_arch_is_supported_and_resolves_to_the_model_class():
    from vllm import ModelRegistry

    from maskkv_vllm.vllm_adapter.worker.model import LLaDAForDiffusionLM

    plugin.register()
    assert "LLaDAModelLM" in ModelRegistry.get_supported_archs()
    assert ModelRegistry.models["LLaDAModelLM"].load_model_cls() is LLaDAForDiffusionLM


def test_a_foreign_registration_is_replaced(caplog):
    from vllm import ModelRegistry

    plugin.register()
    original = ModelRegistry.models[plugin.ARCHITECTURE]
    ModelRegistry.register_model(plugin.ARCHITECTURE, "some.other.module:Model")
    try:
        plugin._REGISTERED = False
        with caplog.at_level(logging.WARNING, logger=plugin.__name__):
            plugin.register()
        assert "some.other.module:Model" in caplog.text
        entry = ModelRegistry.models[plugin.ARCHITECTURE]
        assert f"{entry.module_name}:{entry.class_name}" == plugin.MODEL_CLASS
    finally:
        ModelRegistry.models[plugin.ARCHITECTURE] = original


def test_autoconfig_reads_a_tiny_checkpoint(vllm_tiny_dir):
    from transformers import AutoConfig

    from maskkv_vllm.vllm_adapter.hf_config import LLaDAConfig

    plugin.register()
    config = AutoConfig.from_pretrained(str(vllm_tiny_dir))
    assert isinstance(config, LLaDAConfig)
    # HF standard names, mapped from LLaDA's fields (2 layers, 4 heads of 32).
    assert config.hidden_size == 128
    assert config.num_attention_heads == 4
    assert config.num_key_value_heads == 4
    assert config.num_hidden_layers == 2
    assert config.intermediate_size == 256
    assert config.max_position_embeddings == 4096
    assert config.vocab_size == 262
    assert config.head_dim == 32
    assert config.rms_norm_eps == 1e-5
    assert config.rope_theta == 500000.0
    assert config.tie_word_embeddings is False
    assert config.to_llada_config().mask_token_id == 261


def test_default_config_is_llada_8b():
    from maskkv_vllm.vllm_adapter.hf_config import LLaDAConfig

    c = LLaDAConfig().to_llada_config()
    assert (c.d_model, c.n_heads, c.n_kv_heads, c.n_layers) == (4096, 32, 32, 32)
    assert (c.mlp_hidden_size, c.vocab_size, c.mask_token_id) == (12288, 126464, 126336)


def test_config_rejects_unsupported_fields():
    from maskkv_vllm.vllm_adapter.hf_config import LLaDAConfig

    with pytest.raises(ValueError, match="head_dim=64"):
        LLaDAConfig(d_model=128, n_heads=4, head_dim=64)
    with pytest.raises(ValueError, match="alibi=True"):
        LLaDAConfig(alibi=True).to_llada_config()


def test_version_mismatch_warns_but_registers(monkeypatch, caplog):
    import vllm

    assert plugin.check_vllm_version()
    monkeypatch.setattr(vllm, "__version__", "0.99.0")
    plugin._REGISTERED = False
    with caplog.at_level(logging.WARNING, logger=plugin.__name__):
        plugin.register()
    assert "found vLLM 0.99.0" in caplog.text
    assert plugin._REGISTERED


def _declared_in_setup_cfg() -> bool:
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    section = "options.entry_points"
    return ENTRY_POINT in cfg.get(section, "vllm.general_plugins", fallback="")


@pytest.mark.skipif(
    not _declared_in_setup_cfg(),
    reason="setup.cfg does not declare the vllm.general_plugins entry point yet",
)
def test_entry_point_is_installed():
    eps = metadata.entry_points(group="vllm.general_plugins")
    assert any(ep.name == "maskkv" and ep.value == ENTRY_POINT for ep in eps)
