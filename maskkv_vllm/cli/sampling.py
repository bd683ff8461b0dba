"""The sampling flags of ``maskkv generate``: one per ``SamplingParams`` field."""

from __future__ import annotations

import argparse

from maskkv_vllm.sampling_params import SAMPLING_OPTIONS, SamplingParams


def add_sampling_args(p: argparse.ArgumentParser) -> None:
    """A flag per ``SamplingParams`` field (``SAMPLING_OPTIONS``): its name, default
    and docstring; ``--steps`` defaults to ``--gen-length``."""
    for opt in SAMPLING_OPTIONS.values():
        if not opt.cli:
            continue
        flag, text = "--" + opt.name.replace("_", "-"), _flag_help(opt.help)
        if opt.kinds == (bool,):  # every boolean option defaults to False
            p.add_argument(flag, action="store_true", help=text)
        elif opt.name == "steps":  # one token per step unless given
            text += " (default: --gen-length)"
            p.add_argument(flag, type=int, default=None, help=text)
        else:
            kind = opt.kinds[-1]  # int, float or str
            p.add_argument(
                flag, type=kind, default=opt.default, choices=opt.choices, help=text
            )


def _flag_help(doc: str) -> str:
    """A field docstring as argparse help (no reST quotes; ``%`` is literal)."""
    return doc.replace("``", "").replace("%", "%%")


def sampling_params(args: argparse.Namespace) -> SamplingParams:
    from maskkv_vllm.eviction.registry import policy_evicts

    if args.kv_budget is not None and not policy_evicts(args.kv_policy):
        raise ValueError(
            f"--kv-budget {args.kv_budget} has no effect with --kv-policy "
            f"{args.kv_policy}, which keeps every prompt entry: choose an evicting "
            "policy (maskkv, snapkv, ...) or drop --kv-budget"
        )
    given = {o.name: getattr(args, o.name) for o in SAMPLING_OPTIONS.values() if o.cli}
    if given["steps"] is None:
        given["steps"] = args.gen_length
    return SamplingParams(**given)
