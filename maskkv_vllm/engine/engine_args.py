"""Every engine flag in one place, as vLLM's ``EngineArgs``: the dataclass, its
command-line options (``add_cli_args``) and the validated ``EngineConfig`` it makes.

Each subcommand adds the option groups it uses; ``LLM(...)`` builds the same
dataclass from its keyword arguments, so a flag and a keyword never disagree.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import warnings
from dataclasses import dataclass

from maskkv_vllm import machine_defaults
from maskkv_vllm.config import CACHE_MODES, CacheConfig, EngineConfig, MaskKVConfig
from maskkv_vllm.sampling_params import CANVAS_CACHES, field_docs

RENAMED = {"block_size": "page_size", "num_blocks": "num_pages"}
"""Old keyword -> new (0.1.1): the embedded pool's unit is a page, one (layer, KV
head)'s slots; "block" now means only vLLM's block or a diffusion block."""

GROUPS = ("model", "device", "policy", "cache", "scheduler", "maskkv")
"""Option groups, in the order ``add_cli_args`` adds them."""


@dataclass
class EngineArgs:
    """Flags of the embedded engine (``auto`` values follow the machine)."""

    model: str = "tiny"
    """Checkpoint directory, or a built-in name (tiny, retrieval)."""
    dtype: str = machine_defaults.AUTO
    """float32 | bfloat16 | float16; auto: bfloat16 on a GPU, float32 on the CPU."""
    device: str = machine_defaults.AUTO
    """cpu | cuda | cuda:N; auto: cuda when torch sees a GPU, else cpu."""
    rope_scaling: float = 1.0
    """NTK factor on rope_theta, for prompts past the trained length."""
    max_model_len: int | None = None
    """Longest prompt + answer (None: max_sequence_length x rope_scaling)."""
    kv_policy: str = "full"
    """Eviction policy of requests that choose none."""
    kv_budget: int | None = None
    """Budget B of evicting requests that choose none."""
    cache_mode: str = "paged"
    """Prompt KV: paged pool (evicting policies need it), dense prefix, none."""
    canvas_cache: str = "none"
    """Canvas cache of requests that choose none: none (exact), dual,
    dual_refresh (full cache only) or adaptive."""
    prompt_refresh_interval: int | None = None
    """Recompute the prompt KV every this many steps (None: never)."""
    kv_cache_memory: int | str | None = machine_defaults.AUTO
    """Page pool size ("4GiB"); auto: half the GPU's free memory, or 1GiB."""
    num_pages: int | None = None
    """Page pool in pages (instead of kv_cache_memory)."""
    page_size: int = 16
    """Token slots per KV page."""
    max_num_seqs: int = 16
    """Requests denoised together."""
    max_num_batched_tokens: int = 65536
    """Tokens one engine step forwards at most."""
    max_queue_len: int = 1024
    """Waiting requests at most; more are refused (HTTP 503)."""
    served_model_name: str | None = None
    """Name reported by /v1/models (None: the model)."""
    maskkv_alpha: float = MaskKVConfig.alpha
    """MaskKV's prompt-preference head floor."""
    maskkv_beta: float = MaskKVConfig.beta
    """MaskKV's boundary-aware layer floor."""
    maskkv_profile: str | None = None
    """Layer-importance profile JSON (from ``maskkv profile``)."""

    @staticmethod
    def add_cli_args(
        parser: argparse.ArgumentParser,
        groups: tuple[str, ...] = GROUPS,
        model: bool = True,
        skip: tuple[str, ...] = (),
    ) -> None:
        """Add the options of ``groups``; ``model=False`` leaves ``--model`` out
        (a subcommand that takes the model as a positional argument, or requires
        it); ``skip`` names fields a subcommand has no use for."""
        unknown = set(groups) - set(GROUPS)
        if unknown:
            raise ValueError(f"unknown option groups {sorted(unknown)}")
        skipped = set(skip) | (set() if model else {"model"})
        for group in GROUPS:
            if group in groups:
                for name, kwargs in _OPTIONS[group]:
                    if name not in skipped:
                        _add(parser, name, **kwargs)

    @classmethod
    def from_cli_args(cls, args: argparse.Namespace) -> EngineArgs:
        """The parsed options a subcommand has; defaults for the rest."""
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in vars(args).items() if k in names})

    def resolved(self) -> EngineArgs:
        """These args with ``auto`` device, dtype and pool resolved for this machine."""
        device = machine_defaults.device(self.device)
        memory = self.kv_cache_memory
        if self.num_pages is None and memory is not None:
            memory = machine_defaults.pool(memory, device)
        return dataclasses.replace(
            self,
            device=device,
            dtype=machine_defaults.dtype(self.dtype, device),
            kv_cache_memory=memory,
        )

    def create_engine_config(self) -> EngineConfig:
        """The validated ``EngineConfig`` (a bad value raises ValueError naming it)."""
        a = self.resolved()
        paged = a.cache_mode == "paged"
        cache = CacheConfig(
            a.cache_mode,
            a.prompt_refresh_interval,
            page_size=a.page_size,
            kv_cache_memory=a.kv_cache_memory if paged and not a.num_pages else None,
            num_pages=a.num_pages if paged else None,
        )
        return EngineConfig(
            model=str(a.model),
            dtype=a.dtype,
            device=a.device,
            rope_scaling=a.rope_scaling,
            max_model_len=a.max_model_len,
            max_num_seqs=a.max_num_seqs,
            max_num_batched_tokens=a.max_num_batched_tokens,
            max_queue_len=a.max_queue_len,
            kv_policy=a.kv_policy,
            canvas_cache=a.canvas_cache,
            kv_budget=a.kv_budget,
            served_model_name=a.served_model_name,
            cache=cache,
            maskkv=MaskKVConfig(
                alpha=a.maskkv_alpha, beta=a.maskkv_beta, profile=a.maskkv_profile
            ),
        )


def renamed_keywords(kwargs: dict) -> dict:
    """``kwargs`` with the old names of ``RENAMED`` replaced by the new ones, with a
    DeprecationWarning each; ValueError when both names of one field are given."""
    out = dict(kwargs)
    for old, new in RENAMED.items():
        if old in out:
            if new in out:
                raise ValueError(f"give {new} or its old name {old}, not both")
            warnings.warn(_renamed(old, new), DeprecationWarning, stacklevel=3)
            out[new] = out.pop(old)
    return out


def _renamed(old: str, new: str) -> str:
    return f"{old} is deprecated and will be removed: use {new}"


class _DeprecatedFlag(argparse.Action):
    """An old flag name: stores into the new field and says so on stderr."""

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        new = "--" + self.dest.replace("_", "-")
        print(f"warning: {_renamed(option_string, new)}", file=sys.stderr)
        setattr(namespace, self.dest, values)


def _help(name: str) -> str:
    """The field's docstring is its help text (one source)."""
    return _FIELD_DOCS[name]


def _add(parser: argparse.ArgumentParser, name: str, **kwargs) -> None:
    default = next(f.default for f in dataclasses.fields(EngineArgs) if f.name == name)
    parser.add_argument(
        "--" + name.replace("_", "-"), default=default, help=_help(name), **kwargs
    )
    old = next((o for o, n in RENAMED.items() if n == name), None)
    if old is not None:
        flag = "--" + old.replace("_", "-")
        parser.add_argument(
            flag, dest=name, action=_DeprecatedFlag, help=argparse.SUPPRESS, **kwargs
        )


def _policy_choices() -> list[str]:
    from maskkv_vllm.eviction.registry import policy_names

    return policy_names()


_FIELD_DOCS = field_docs(EngineArgs)
_OPTIONS: dict[str, list[tuple[str, dict]]] = {
    "model": [
        ("model", {}),
        ("rope_scaling", {"type": float}),
        ("max_model_len", {"type": int}),
    ],
    "device": [
        ("dtype", {"choices": (machine_defaults.AUTO, *machine_defaults.DTYPES)}),
        ("device", {}),
    ],
    "policy": [
        ("kv_policy", {"choices": _policy_choices()}),
        ("kv_budget", {"type": int}),
    ],
    "cache": [
        ("cache_mode", {"choices": CACHE_MODES}),
        ("canvas_cache", {"choices": CANVAS_CACHES}),
        ("prompt_refresh_interval", {"type": int}),
        ("kv_cache_memory", {}),
        ("page_size", {"type": int}),
    ],
    "scheduler": [
        ("max_num_seqs", {"type": int}),
        ("max_num_batched_tokens", {"type": int}),
        ("max_queue_len", {"type": int}),
    ],
    "maskkv": [
        ("maskkv_alpha", {"type": float}),
        ("maskkv_beta", {"type": float}),
        ("maskkv_profile", {}),
    ],
}
