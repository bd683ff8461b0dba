"""Old module paths (before the 2026-12 renovation) still import, with a warning.

``maskkv_vllm.kv.paged_kv_cache`` is now ``maskkv_vllm.kv_cache.paged_kv_cache``,
``maskkv_vllm.vllm_adapter.worker.MaskKVCPUWorker`` a class of
``maskkv_vllm.vllm_adapter.worker.cpu_worker``, and so on: a finder on
``sys.meta_path`` maps each old name to the module that replaced it (the same
module object, so ``isinstance`` and monkeypatching still agree). Remove in 0.3.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
import warnings

PACKAGES = {
    "maskkv_vllm.cache": "maskkv_vllm.paging",
    "maskkv_vllm.kv": "maskkv_vllm.kv_cache",
}
MODULES = {
    "maskkv_vllm.kv.prompt_kv": "maskkv_vllm.kv_cache.dense_prompt_cache",
    # ``from maskkv_vllm.kv import prompt_kv`` asks the new package for it
    "maskkv_vllm.kv_cache.prompt_kv": "maskkv_vllm.kv_cache.dense_prompt_cache",
    "maskkv_vllm.models.bert": "maskkv_vllm.testbeds.bert",
    "maskkv_vllm.evaluation.bert_tasks": "maskkv_vllm.testbeds.bert.tasks",
    "maskkv_vllm.entrypoints.protocol": "maskkv_vllm.openai_api.protocol",
    **{
        f"maskkv_vllm.vllm_adapter.{old}": f"maskkv_vllm.vllm_adapter.{new}"
        for old, new in {
            "scheduler": "core.scheduler",
            "footprint": "core.footprint",
            "metrics": "core.metrics",
            "gpu_worker": "worker.gpu_worker",
            "runner": "worker.cpu_model_runner",
            "gpu_runner": "worker.gpu_model_runner",
            "diffusion_runner": "worker.diffusion_runner",
            "diffusion_attention": "worker.diffusion_attention",
            "model": "worker.model",
            "workers": "worker.selection",
            "api": "entrypoints.api",
            "serve": "entrypoints.serve",
            "validation": "entrypoints.validation",
        }.items()
    },
}
"""Old module -> new module; ``vllm_adapter.worker`` itself became a package
whose ``__getattr__`` forwards the old module's names."""


def new_name(old: str) -> str | None:
    """The module that replaced ``old``; None if it did not move."""
    if old in MODULES:
        return MODULES[old]
    for prefix, target in PACKAGES.items():
        if old == prefix or old.startswith(prefix + "."):
            return target + old[len(prefix) :]
    return None


def warn(old: str, new: str) -> None:
    warnings.warn(
        f"{old} moved to {new}; the old name goes away in maskkv-vllm 0.3",
        DeprecationWarning,
        stacklevel=3,
    )


class _Alias(importlib.abc.Loader):
    def __init__(self, new: str) -> None:
        self.new = new

    def create_module(self, spec):
        module = importlib.import_module(self.new)
        self.spec = module.__spec__
        return module

    def exec_module(self, module) -> None:
        # Already executed under its new name; importlib set the alias's spec on
        # it, and the module keeps its own.
        module.__spec__ = self.spec


class MovedModuleFinder(importlib.abc.MetaPathFinder):
    """Resolves an old module name to the module object of its new name."""

    def find_spec(self, fullname, path=None, target=None):
        new = new_name(fullname)
        if new is None:
            return None
        warn(fullname, new)
        spec = importlib.util.spec_from_loader(fullname, _Alias(new))
        if importlib.util.find_spec(new).submodule_search_locations is not None:
            spec.submodule_search_locations = []  # a package: submodules resolve too
        return spec


def install() -> None:
    if not any(isinstance(f, MovedModuleFinder) for f in sys.meta_path):
        # First: the old package names resolve to the new directories, where the
        # path finder would load a second copy of each module under its old name.
        sys.meta_path.insert(0, MovedModuleFinder())
