"""The built-in tiny model: a checkpoint written on first use, then reused."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from maskkv_vllm.models.tiny import write_tiny_checkpoint

BUILTIN_NAME = "tiny"
"""``--model tiny`` selects the built-in random tiny LLaDA (seed 0)."""
SHIPPED = {
    "retrieval": Path(__file__).resolve().parents[1] / "assets" / "llada-retrieval"
}
"""Checkpoints shipped with the package: ``retrieval`` is the small LLaDA trained on
the synthetic retrieval tasks (``benchmarks/train_model.py``)."""


def cache_dir() -> Path:
    """Where built-in checkpoints live ($MASKKV_CACHE or ~/.cache/maskkv_vllm)."""
    root = os.environ.get("MASKKV_CACHE") or Path.home() / ".cache" / "maskkv_vllm"
    return Path(root)


def resolve_model(model: str | Path) -> Path:
    """Return a checkpoint directory for a path or a built-in name."""
    if str(model) in SHIPPED:
        path = SHIPPED[str(model)]
        if not (path / "config.json").is_file():
            raise FileNotFoundError(f"the shipped checkpoint {path} is missing")
        return path
    if str(model) != BUILTIN_NAME:
        path = Path(model)
        if not path.is_dir():
            raise FileNotFoundError(
                f"model {str(model)!r} is neither a checkpoint directory nor one "
                f"of {BUILTIN_NAME!r}, {', '.join(map(repr, SHIPPED))}"
            )
        return path
    target = cache_dir() / "tiny-llada-seed0"
    if not (target / "config.json").is_file():
        target.parent.mkdir(parents=True, exist_ok=True)
        # Written aside and renamed, so a concurrent or killed writer never leaves a
        # half-written checkpoint behind.
        tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=".tiny-"))
        try:
            write_tiny_checkpoint(tmp, seed=0)
            tmp.rename(target)
        except OSError:
            if not (target / "config.json").is_file():
                raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return target
