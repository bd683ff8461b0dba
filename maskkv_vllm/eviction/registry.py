"""Policy names -> policies. Built-ins below; ``register_policy`` adds more."""

from __future__ import annotations

from collections.abc import Callable

from maskkv_vllm.eviction.allocators import (
    AdaKVHeads,
    BoundaryAwareLayers,
    PromptPreferenceHeads,
    PyramidLayers,
    SqueezeLayers,
)
from maskkv_vllm.eviction.config import MaskKVConfig
from maskkv_vllm.eviction.policy import Policy
from maskkv_vllm.eviction.profile import LayerProfile
from maskkv_vllm.eviction.scorers import (
    FullCache,
    MaskVoteScorer,
    RandomScorer,
    SnapKVScorer,
    StreamingScorer,
)

Factory = Callable[[MaskKVConfig, LayerProfile | None], Policy]


def _snapkv(c: MaskKVConfig) -> Policy:
    return SnapKVScorer(c.window, c.pool_kernel)


def _importance(p: LayerProfile | None) -> tuple[float, ...] | None:
    return p.importance if p else None


def _similarity(p: LayerProfile | None) -> tuple[float, ...] | None:
    return p.similarity if p else None


def _maskkv(inner: Policy, c: MaskKVConfig, p: LayerProfile | None) -> Policy:
    layers = BoundaryAwareLayers(inner, c.beta, _importance(p), c.boundary_layers)
    return PromptPreferenceHeads(layers, c.alpha)


_POLICIES: dict[str, Factory] = {
    "full": lambda c, p: FullCache(),
    "random": lambda c, p: RandomScorer(),
    "streaming": lambda c, p: StreamingScorer(c.sinks),
    "snapkv": lambda c, p: _snapkv(c),
    "pyramidkv": lambda c, p: PyramidLayers(_snapkv(c), c.pyramid_beta, c.window),
    "adakv": lambda c, p: AdaKVHeads(_snapkv(c), c.adakv_floor),
    "squeezeattention": lambda c, p: SqueezeLayers(
        _snapkv(c), _similarity(p), c.squeeze_fraction
    ),
    "maskkv": lambda c, p: _maskkv(MaskVoteScorer(), c, p),
    # Ablations: MaskKV's mask-vote selection under the other allocators, and the
    # MaskKV allocators over SnapKV's selection.
    "maskvote": lambda c, p: MaskVoteScorer(),
    "maskvote-pyramid": lambda c, p: PyramidLayers(MaskVoteScorer(), c.pyramid_beta, 0),
    "maskvote-adakv": lambda c, p: AdaKVHeads(MaskVoteScorer(), c.adakv_floor),
    "maskvote-squeeze": lambda c, p: SqueezeLayers(
        MaskVoteScorer(), _similarity(p), c.squeeze_fraction
    ),
    "snapkv-maskkv-budget": lambda c, p: _maskkv(_snapkv(c), c, p),
    # MaskKV whose voters also include the last prompt token, half the vote:
    # under Dream's shift that row's output is read for the answer's first token.
    "maskkv-query": lambda c, p: _maskkv(MaskVoteScorer(query_share=0.5), c, p),
    # SnapKV whose window runs through the canvas: its last `window` queries are
    # the prompt's end and the mask tokens (vs "maskvote": every mask token votes).
    "snapkv-mask-window": lambda c, p: SnapKVScorer(
        c.window, c.pool_kernel, canvas_in_window=True
    ),
}


_EVICTS: dict[str, bool] = {}
"""policy_evicts answers, by name (a name is registered once)."""


def policy_names() -> list[str]:
    return sorted(_POLICIES)


def check_policy_name(name: str) -> None:
    if name not in _POLICIES:
        raise ValueError(
            f"kv_policy={name!r} is not one of {', '.join(policy_names())}"
        )


def make_policy(
    name: str, config: MaskKVConfig | None = None, profile: LayerProfile | None = None
) -> Policy:
    """Build the named policy with the engine's hyper-parameters and profile."""
    check_policy_name(name)
    return _POLICIES[name](config or MaskKVConfig(), profile)


def register_policy(name: str, factory: Factory) -> None:
    """Add a policy under a new name (third-party scorers)."""
    if name in _POLICIES:
        raise ValueError(f"kv_policy {name!r} is already registered")
    _POLICIES[name] = factory


def policy_evicts(name: str | None) -> bool:
    """Whether the named policy evicts, asked of the policy itself (a registered
    policy that keeps everything needs no budget, whatever its name); None, the
    engine's default before it is applied, does not."""
    if name is None:
        return False
    if name not in _EVICTS:
        check_policy_name(name)
        _EVICTS[name] = _POLICIES[name](MaskKVConfig(), None).evicts
    return _EVICTS[name]


def check_kv_budget(budget: object) -> None:
    """The one positive-budget rule (a request's, an engine's default, vLLM's):
    None (unset) or a positive int; a bool or a float is refused, by value.

    Raises:
        ValueError: ``"kv_budget=<value> must be a positive integer"``.
    """
    is_int = isinstance(budget, int) and not isinstance(budget, bool)
    if budget is not None and not (is_int and budget > 0):
        raise ValueError(f"kv_budget={budget!r:.80} must be a positive integer")


def check_budget(name: str | None, budget: int | None) -> None:
    """The one "an evicting policy needs a budget" rule, for every entry point."""
    if budget is None and policy_evicts(name):
        raise ValueError(f"kv_policy={name!r} needs a kv_budget")
