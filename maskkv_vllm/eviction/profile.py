"""Offline layer-importance profiles: I(l) = 1 - mean cos(h_in, h_in + attn(h_in))."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path


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
