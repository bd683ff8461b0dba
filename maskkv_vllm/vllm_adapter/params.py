"""Engine and per-request MaskKV settings inside vLLM, validated into our types.

Engine-wide: ``--additional-config '{"maskkv": {...}}'`` (``LLM(additional_config=
...)``) becomes an ``AdapterConfig``: the ``MaskKVConfig`` fields (alpha, beta, ...)
plus the default ``kv_policy``/``kv_budget``/``canvas_cache`` and ``free_blocks``.
Per request: ``SamplingParams.extra_args["maskkv"]`` (a dict, Python API) or flat
``extra_args["maskkv_<field>"]`` keys (the HTTP ``vllm_xargs`` form, which allows
no nested dicts) becomes our ``maskkv_vllm.sampling_params.SamplingParams``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from maskkv_vllm.config import MaskKVConfig
from maskkv_vllm.eviction.registry import (
    check_budget,
    check_kv_budget,
    check_policy_name,
)
from maskkv_vllm.sampling_params import (
    CANVAS_CACHES,
    SAMPLING_OPTIONS,
    SamplingParams,
    length_defaults,
)

CONFIG_KEY = "maskkv"
"""Key of our settings in ``additional_config`` and in ``extra_args``."""
FLAT_PREFIX = "maskkv_"
"""Prefix of the flat per-request keys (``vllm_xargs``)."""

_MASKKV_FIELDS = {f.name for f in dataclasses.fields(MaskKVConfig)}
_BOOL_FIELDS = {n for n, o in SAMPLING_OPTIONS.items() if o.kinds == (bool,)}


@dataclass(frozen=True)
class AdapterConfig:
    """Engine-wide MaskKV settings of a vLLM engine."""

    maskkv: MaskKVConfig = MaskKVConfig()
    """Hyper-parameters of the eviction policies."""
    kv_policy: str = "full"
    """Policy of requests that do not choose one."""
    kv_budget: int | None = None
    """Budget B of requests that do not choose one."""
    free_blocks: bool = True
    """Admit a request by its compressed bound and return the blocks it does
    not fill after step 0; False (a baseline) holds the whole prompt's pages."""
    canvas_cache: str = "none"
    """Canvas cache of requests that do not choose one ("none" or "dual")."""

    def __post_init__(self) -> None:
        check_policy_name(self.kv_policy)
        check_kv_budget(self.kv_budget)
        check_budget(self.kv_policy, self.kv_budget)
        if self.canvas_cache not in CANVAS_CACHES:
            raise ValueError(
                f"canvas_cache={self.canvas_cache!r} is not one of {CANVAS_CACHES}"
            )
        if not isinstance(self.free_blocks, bool):
            raise ValueError(f"free_blocks={self.free_blocks!r} must be a bool")

    @classmethod
    def from_additional_config(cls, additional: dict[str, Any] | None) -> AdapterConfig:
        """Parse ``additional_config["maskkv"]``; unknown keys raise ``ValueError``."""
        raw = dict((additional or {}).get(CONFIG_KEY) or {})
        if not isinstance(raw, dict):
            raise ValueError(f"additional_config[{CONFIG_KEY!r}]={raw!r} is not a dict")
        own = {
            k: raw.pop(k)
            for k in ("kv_policy", "kv_budget", "free_blocks", "canvas_cache")
            if k in raw
        }
        unknown = set(raw) - _MASKKV_FIELDS
        if unknown:
            raise ValueError(
                f"unknown additional_config[{CONFIG_KEY!r}] keys {sorted(unknown)}"
            )
        if "boundary_layers" in raw and raw["boundary_layers"] is not None:
            raw["boundary_layers"] = tuple(raw["boundary_layers"])
        return cls(maskkv=MaskKVConfig(**raw), **own)


def request_params(
    extra_args: dict[str, Any] | None, max_tokens: int | None, config: AdapterConfig
) -> SamplingParams:
    """Our validated ``SamplingParams`` for one vLLM request.

    Missing fields: ``gen_length`` = the request's ``max_tokens``; ``block_length``
    and ``steps`` as ``sampling_params.length_defaults`` gives them (the OpenAI
    server's rule); policy and budget from ``config``.

    Args:
        extra_args: the vLLM ``SamplingParams.extra_args``.
        max_tokens: the vLLM ``SamplingParams.max_tokens``.
        config: the engine's defaults.

    Raises:
        ValueError: an unknown key, an invalid value, or CFG (``cfg_scale > 0``),
            which the vLLM path does not run.
    """
    own = request_only_params(extra_args, max_tokens)
    params = own.with_kv_defaults(
        config.kv_policy, config.kv_budget, config.canvas_cache
    )
    check_budget(params.kv_policy, params.kv_budget)
    return params


def request_only_params(
    extra_args: dict[str, Any] | None, max_tokens: int | None
) -> SamplingParams:
    """``request_params`` without the engine's defaults (policy and budget unset
    stay None): everything a front end can check without the engine config.

    Raises:
        ValueError: an unknown key, an invalid value, or CFG.
    """
    raw = _raw_request_args(extra_args or {})
    unknown = set(raw) - set(SAMPLING_OPTIONS)
    if unknown:
        raise ValueError(f"unknown maskkv request keys {sorted(unknown)}")
    gen = raw.setdefault("gen_length", max_tokens)
    if gen is None:
        raise ValueError("maskkv gen_length is missing and max_tokens is None")
    if isinstance(gen, int) and gen > 0:
        raw = {**length_defaults(gen), **raw}
    params = SamplingParams(**raw)
    if params.cfg_scale > 0:
        raise ValueError(f"cfg_scale={params.cfg_scale}: CFG is not supported in vLLM")
    return params


ENGINE = {"tensor_parallel_size": 1}
"""What the config hook (``engine_config.note_engine``) saw of the engine in
this process, for the front-end check (``validation.check_request``)."""


def check_engine_fit(params: SamplingParams, tensor_parallel_size: int) -> None:
    """Refuse what the engine's shape cannot run: the adaptive canvas cache
    keeps each canvas row's whole output, so it runs on one rank only.

    Raises:
        ValueError: naming the option and the engine's tensor-parallel size.
    """
    if params.canvas_cache == "adaptive" and tensor_parallel_size > 1:
        raise ValueError(
            "canvas_cache='adaptive' caches each canvas row's whole output and "
            f"runs on one rank; tensor_parallel_size={tensor_parallel_size}"
        )


def _raw_request_args(extra_args: dict[str, Any]) -> dict[str, Any]:
    nested = extra_args.get(CONFIG_KEY)
    if nested is not None and not isinstance(nested, dict):
        raise ValueError(f"extra_args[{CONFIG_KEY!r}]={nested!r} is not a dict")
    raw = dict(nested or {})
    for key, value in extra_args.items():
        if key.startswith(FLAT_PREFIX):
            name = key.removeprefix(FLAT_PREFIX)
            raw[name] = _flat_value(name, value)
    return raw


def _flat_value(name: str, value: Any) -> Any:
    """A flat ``vllm_xargs`` value as our field wants it: vLLM's request model
    allows no booleans there (pydantic turns ``true`` into 1), so a boolean
    field takes 0 and 1 too."""
    is_int = isinstance(value, int) and not isinstance(value, bool)
    if name in _BOOL_FIELDS and is_int and value in (0, 1):
        return bool(value)
    return value
