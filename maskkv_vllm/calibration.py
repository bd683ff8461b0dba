"""Offline calibration of MaskKV's layer profile: run the model on calibration
prompts at step 0 and measure how much each layer's attention changes its input
(``maskkv profile``). Above both the model and the eviction policies, which only
read the saved ``LayerProfile``."""

from __future__ import annotations

import datetime
from collections.abc import Callable

import torch
import torch.nn.functional as F

from maskkv_vllm.eviction.profile import LayerProfile
from maskkv_vllm.models.protocol import DiffusionLM


@torch.inference_mode()
def layer_cosines(model: DiffusionLM, ids: torch.Tensor) -> torch.Tensor:
    """Mean cos(h_in, h_in + attention output) per layer for one sequence.

    Args:
        ids: (T,) the step-0 sequence (prompt then masks).

    Returns:
        (D,) fp32.
    """
    inputs: list[torch.Tensor] = []
    outputs: list[torch.Tensor] = []
    hooks = []
    for block in model.blocks:
        hooks.append(block.register_forward_pre_hook(lambda m, a: inputs.append(a[0])))
        hooks.append(
            block.attn_out.register_forward_hook(lambda m, a, o: outputs.append(o))
        )
    try:
        positions = torch.arange(ids.shape[0], device=ids.device)
        model(ids[None], positions[None])
    finally:
        for h in hooks:
            h.remove()
    cos = [
        F.cosine_similarity(h.float(), (h + o).float(), dim=-1).mean()
        for h, o in zip(inputs, outputs, strict=True)
    ]
    return torch.stack(cos)


def compute_profile(
    model: DiffusionLM,
    prompts: list[list[int]],
    gen_length: int,
    meta: dict | None = None,
    progress: Callable[[int], object] | None = None,
) -> LayerProfile:
    """Average the per-layer importance over calibration prompts at step 0.

    ``progress(1)`` is called after each prompt (a progress bar's ``update``).
    """
    if not prompts:
        raise ValueError("calibration needs at least one prompt")
    device = next(model.parameters()).device
    mask = model.config.mask_token_id
    total = torch.zeros(model.config.n_layers)
    for p in prompts:
        ids = torch.tensor(p + [mask] * gen_length, device=device)
        total += layer_cosines(model, ids).cpu()
        if progress is not None:
            progress(1)
    mean_cos = total / len(prompts)
    info = {
        "num_samples": len(prompts),
        "prompt_tokens": [min(map(len, prompts)), max(map(len, prompts))],
        "gen_length": gen_length,
        "rope_scaling": model.rope_scaling,
        "date": datetime.date.today().isoformat(),
        **(meta or {}),
    }
    importance = tuple(float(min(max(1 - c, 0.0), 2.0)) for c in mean_cos)
    return LayerProfile(importance, info)
