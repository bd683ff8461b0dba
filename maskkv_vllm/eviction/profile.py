"""Offline layer-importance profiles: I(l) = 1 - mean cos(h_in, h_in + attn(h_in))."""

from __future__ import annotations

import datetime
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from maskkv_vllm.models.llada import LLaDAModel


@dataclass(frozen=True)
class LayerProfile:
    """Per-layer importance of one (model, RoPE scaling), with how it was measured."""

    importance: tuple[float, ...]
    """I(l) = 1 - mean cosine similarity of the residual entering layer l's
    attention sub-layer and leaving it, over all tokens at step 0."""
    meta: dict = field(default_factory=dict, compare=False)
    """Calibration metadata: model, sample count, lengths, date."""

    def __post_init__(self) -> None:
        if not self.importance:
            raise ValueError("a layer profile needs at least one layer")
        for i, x in enumerate(self.importance):
            if not isinstance(x, int | float) or not 0 <= x <= 2:
                raise ValueError(f"layer {i} importance {x!r} is outside [0, 2]")

    @property
    def num_layers(self) -> int:
        return len(self.importance)

    @property
    def similarity(self) -> tuple[float, ...]:
        """cos(h_in, h_out) per layer, as SqueezeAttention clusters it."""
        return tuple(1.0 - x for x in self.importance)

    def check_model(self, num_layers: int) -> None:
        if self.num_layers != num_layers:
            raise ValueError(
                f"layer profile has {self.num_layers} layers but the model has "
                f"{num_layers}"
            )

    def save(self, path: str | Path) -> None:
        data = {"importance": list(self.importance), "meta": self.meta}
        Path(path).write_text(json.dumps(data, indent=2))

    @classmethod
    def load(cls, path: str | Path, num_layers: int | None = None) -> LayerProfile:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"layer profile {path} does not exist")
        try:
            data = json.loads(path.read_text())
            profile = cls(tuple(data["importance"]), data.get("meta", {}))
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise ValueError(f"{path} is not a layer profile: {e}") from e
        if num_layers is not None:
            profile.check_model(num_layers)
        return profile


@torch.inference_mode()
def layer_cosines(model: LLaDAModel, ids: torch.Tensor) -> torch.Tensor:
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
    model: LLaDAModel,
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
