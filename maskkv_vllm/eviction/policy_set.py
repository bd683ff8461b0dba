"""The engine's policies by name, built once with its settings and layer profile, and
the step-0 ``Eviction`` of a request: one copy for the embedded engine and vLLM."""

from __future__ import annotations

import torch

from maskkv_vllm.eviction.config import MaskKVConfig
from maskkv_vllm.eviction.evictor import Eviction
from maskkv_vllm.eviction.policy import Policy
from maskkv_vllm.eviction.profile import LayerProfile
from maskkv_vllm.eviction.registry import make_policy


class PolicySet:
    """``Policy`` objects per name for one model.

    Args:
        config: the engine's MaskKV and baseline hyper-parameters (the profile
            path is loaded here and checked against ``num_layers``).
        num_layers: D of the model.
    """

    def __init__(self, config: MaskKVConfig, num_layers: int) -> None:
        self.config = config
        path = config.profile
        self.profile = LayerProfile.load(path, num_layers) if path else None
        self._policies: dict[str, Policy] = {}

    def get(self, name: str | None) -> Policy:
        """The named policy (None: the full cache)."""
        name = name or "full"
        if name not in self._policies:
            self._policies[name] = make_policy(name, self.config, self.profile)
        return self._policies[name]

    def eviction(
        self, name: str | None, budget: int | None, generator: torch.Generator
    ) -> Eviction | None:
        """What a request's first step evicts with; None when its policy keeps all."""
        policy = self.get(name)
        if not policy.evicts:
            return None
        return Eviction(policy, budget, generator, self.config.vote_chunk)
