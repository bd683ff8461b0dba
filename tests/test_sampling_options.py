"""One table of sampling options (``SamplingParams``' fields) for every front end:
the ``maskkv generate`` flags, the OpenAI body fields, vLLM's ``maskkv_*`` keys;
one length default, one budget check, one CFG row count (issue 27)."""

from __future__ import annotations

import dataclasses

import pytest

from maskkv_vllm.cli import build_parser
from maskkv_vllm.config import EngineConfig
from maskkv_vllm.engine.request import Request
from maskkv_vllm.openai_api import options
from maskkv_vllm.openai_api.protocol import sampling_params as openai_params
from maskkv_vllm.sampling_params import (
    SAMPLING_OPTIONS,
    SamplingParams,
    field_docs,
    length_defaults,
)
from maskkv_vllm.vllm_adapter.params import AdapterConfig, request_only_params

FIELDS = [f.name for f in dataclasses.fields(SamplingParams)]


def _generate_flags() -> dict[str, object]:
    sub = build_parser()._subparsers._group_actions[0].choices["generate"]
    return {a.dest: a for a in sub._actions}


def test_the_table_is_the_dataclass():
    assert list(SAMPLING_OPTIONS) == FIELDS
    docs = field_docs(SamplingParams)
    for f in dataclasses.fields(SamplingParams):
        opt = SAMPLING_OPTIONS[f.name]
        assert (opt.default, opt.help) == (f.default, docs[f.name])
        assert len(opt.help) > 20, f.name


def test_generate_has_a_flag_per_field_with_its_default_and_docstring():
    # The flags were listed by hand, with their own help, and without
    # --logits-eos-inf (which both servers accepted).
    flags = _generate_flags()
    for opt in SAMPLING_OPTIONS.values():
        if not opt.cli:  # kv_policy, kv_budget: the engine flags of those names
            assert opt.name in flags
            continue
        action = flags[opt.name]
        assert action.help.startswith(opt.help.replace("``", "")), opt.name
        if opt.name != "steps":  # --steps defaults to --gen-length
            assert action.default == opt.default, opt.name
    assert flags["logits_eos_inf"].option_strings == ["--logits-eos-inf"]
    args = build_parser().parse_args(["generate", "x", "--logits-eos-inf"])
    assert args.logits_eos_inf is True


def test_the_openai_body_takes_every_field_with_its_type():
    assert set(options.EXTRA_FIELDS) | set(options.HONOURED) == set(FIELDS)
    for name, opt in SAMPLING_OPTIONS.items():
        assert options.TYPES[name] == (opt.kinds, opt.what)
    body = {"max_tokens": 16, "logits_eos_inf": True, "seed": 3}
    assert openai_params(body) == SamplingParams(
        gen_length=16, block_length=16, steps=16, logits_eos_inf=True, seed=3
    )


def test_vllm_xargs_take_every_field():
    defaults = {
        "maskkv_" + f.name: f.default for f in dataclasses.fields(SamplingParams)
    }
    defaults = {k: v for k, v in defaults.items() if v is not None}
    assert request_only_params(defaults, None) == SamplingParams()
    with pytest.raises(ValueError, match=r"unknown maskkv request keys \['stpes'\]"):
        request_only_params({"maskkv_stpes": 8}, 16)


@pytest.mark.parametrize("gen", [1, 16, 32, 48, 64, 96, 100])
def test_one_length_default_for_both_servers(gen):
    # Both computed ``32 if gen % 32 == 0 else gen`` on their own.
    want = length_defaults(gen)
    assert want == {"block_length": 32 if gen % 32 == 0 else gen, "steps": gen}
    for got in (openai_params({"max_tokens": gen}), request_only_params(None, gen)):
        assert (got.block_length, got.steps) == (want["block_length"], want["steps"])


@pytest.mark.parametrize("bad", [True, False, 2.5, 0, -4, "8"])
@pytest.mark.parametrize(
    "make",
    [
        lambda b: EngineConfig(kv_policy="maskkv", kv_budget=b),
        lambda b: AdapterConfig(kv_policy="maskkv", kv_budget=b),
        lambda b: SamplingParams(kv_policy="maskkv", kv_budget=b),
    ],
    ids=["EngineConfig", "AdapterConfig", "SamplingParams"],
)
def test_one_budget_rule_refuses_bools_and_non_integers(make, bad):
    # EngineConfig took True and 2.5 (and "8" was a TypeError), AdapterConfig
    # took True: a budget of 1, or a float in the budget arithmetic.
    with pytest.raises(ValueError, match=rf"kv_budget={bad!r} must be a positive "):
        make(bad)
    assert make(8).kv_budget == 8


@pytest.mark.parametrize(("cfg", "rows"), [(0.0, 1), (0.5, 2)])
def test_one_cfg_row_rule(cfg, rows):
    params = SamplingParams(gen_length=16, block_length=16, steps=16, cfg_scale=cfg)
    assert params.num_rows == rows
    r = Request("r", [1] * 10, params, predicted_pages=1)
    assert (r.step_tokens, r.prefill_tokens) == (rows * 16, rows * 26)
