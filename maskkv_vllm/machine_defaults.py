"""Defaults that follow the machine: CUDA when present, else the CPU.

Every command takes ``--device auto --dtype auto --kv-cache-memory auto`` by default
(``engine.engine_args.EngineArgs`` declares them); these resolve them, so a
command that works on a GPU box also starts on a laptop.
"""

from __future__ import annotations

AUTO = "auto"
DTYPES = ("float32", "bfloat16", "float16")
CPU_POOL = "1GiB"
"""Page pool on the CPU (host RAM)."""
GPU_POOL_FRACTION = 0.5
"""Share of the GPU's free memory (before the model loads) the pool takes."""


def device(value: str = AUTO) -> str:
    """``auto`` -> ``cuda`` when torch sees a GPU, else ``cpu``; others unchanged."""
    if value != AUTO:
        return value
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def dtype(value: str, on_device: str) -> str:
    """``auto`` -> bfloat16 on a GPU (LLaDA's training dtype), float32 on the CPU."""
    if value != AUTO:
        return value
    return "bfloat16" if on_device.startswith("cuda") else "float32"


def pool(value: str, on_device: str) -> str | int:
    """``auto`` -> half the GPU's free memory, or ``CPU_POOL`` of host RAM."""
    if value != AUTO:
        return value
    if not on_device.startswith("cuda"):
        return CPU_POOL
    import torch

    free, _ = torch.cuda.mem_get_info(torch.device(on_device))
    return int(free * GPU_POOL_FRACTION)
