"""EngineArgs: one declaration of every engine flag, for the CLI and LLM(...)."""

from __future__ import annotations

import argparse
import dataclasses

import pytest

from maskkv_vllm.cli import build_parser
from maskkv_vllm.config import CacheConfig, EngineConfig, MaskKVConfig
from maskkv_vllm.engine.engine_args import GROUPS, EngineArgs


def test_flags_make_the_config_they_say():
    args = build_parser().parse_args(
        ["serve", "ck", "--kv-policy", "snapkv", "--kv-budget", "4", "--device", "cpu",
         "--dtype", "bfloat16", "--kv-cache-memory", "8MiB", "--page-size", "32",
         "--max-num-seqs", "3", "--maskkv-alpha", "0.2"]
    )  # fmt: skip
    config = EngineArgs.from_cli_args(args).create_engine_config()
    assert config == EngineConfig(
        model="ck", dtype="bfloat16", device="cpu", kv_policy="snapkv", kv_budget=4,
        max_num_seqs=3,
        cache=CacheConfig("paged", page_size=32, kv_cache_memory="8MiB"),
        maskkv=MaskKVConfig(alpha=0.2),
    )  # fmt: skip


def test_every_field_is_documented_and_its_help_is_its_docstring():
    parser = argparse.ArgumentParser()
    EngineArgs.add_cli_args(parser)
    helps = {a.dest: a.help for a in parser._actions}
    for f in dataclasses.fields(EngineArgs):
        if f.name in helps:
            assert helps[f.name] and len(helps[f.name]) > 10, f.name
    assert helps["kv_budget"] == "Budget B of evicting requests that choose none."


def test_each_subcommand_declares_each_flag_once():
    # argparse raises on a second --kv-policy; building the parser is the check.
    sub = build_parser()._subparsers._group_actions[0].choices
    for name, parser in sub.items():
        flags = [s for a in parser._actions for s in a.option_strings]
        assert len(flags) == len(set(flags)), name


def test_unknown_group_is_refused():
    with pytest.raises(ValueError, match=r"unknown option groups \['gpu'\]"):
        EngineArgs.add_cli_args(argparse.ArgumentParser(), ("model", "gpu"))


def test_auto_resolves_for_this_machine(monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    a = EngineArgs().resolved()
    assert (a.device, a.dtype, a.kv_cache_memory) == ("cpu", "float32", "1GiB")
    assert set(GROUPS) == {"model", "device", "policy", "cache", "scheduler", "maskkv"}


class _Recorder:
    """Stands in for ``LLMEngine``: keeps the config ``LLM(...)`` built."""

    def __init__(self, config):
        self.config = config


def _pretend_a_gpu(monkeypatch):
    """``auto`` resolves as on a GPU machine (cuda, bfloat16, 8 GiB free)."""
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device: (2**33, 2**34))
    monkeypatch.setattr("maskkv_vllm.engine.llm.LLMEngine", _Recorder)


def test_llm_takes_engine_args_defaults(monkeypatch):
    # LLM(...) had its own float32 / cpu / 1 GiB, so on a GPU it differed from
    # `maskkv serve` (auto: cuda, bfloat16, half the free memory).
    from maskkv_vllm.engine.llm import LLM

    _pretend_a_gpu(monkeypatch)
    config = LLM().engine.config
    assert config == EngineArgs().create_engine_config()
    assert (config.device, config.dtype) == ("cuda", "bfloat16")
    assert config.cache.kv_cache_memory == 2**32


def test_llm_takes_every_engine_args_field_and_names_an_unknown_one(monkeypatch):
    from maskkv_vllm.engine.llm import LLM

    _pretend_a_gpu(monkeypatch)
    kw = {"max_queue_len": 5, "served_model_name": "x", "maskkv_alpha": 0.2,
          "num_pages": 64, "device": "cpu", "dtype": "float32"}  # fmt: skip
    assert (
        LLM("ck", **kw).engine.config == EngineArgs("ck", **kw).create_engine_config()
    )
    with pytest.raises(TypeError, match=r"\['kv_cache_mem'\]"):
        LLM("ck", kv_cache_mem="1GiB")
    alpha = MaskKVConfig(alpha=0.3)
    assert LLM(maskkv=alpha).engine.config.maskkv == alpha
    with pytest.raises(ValueError, match="give maskkv or maskkv_beta, not both"):
        LLM(maskkv=alpha, maskkv_beta=0.5)


def test_the_pool_speaks_of_pages_and_the_old_block_names_still_work(
    monkeypatch, capsys
):
    # "block" meant an embedded page, a vLLM block and a diffusion block; the
    # embedded pool's keywords are now page_size / num_pages, the old ones deprecated.
    from maskkv_vllm.engine.llm import LLM

    _pretend_a_gpu(monkeypatch)
    new = LLM("ck", page_size=8, num_pages=64, device="cpu").engine.config
    with pytest.warns(DeprecationWarning, match="block_size is deprecated.*page_size"):
        old = LLM("ck", block_size=8, num_pages=64, device="cpu").engine.config
    assert old == new and new.cache.page_size == 8 and new.cache.num_pages == 64
    with pytest.warns(DeprecationWarning, match="num_blocks is deprecated.*num_pages"):
        LLM("ck", num_blocks=64, device="cpu")
    with pytest.raises(ValueError, match="give page_size or its old name block_size"):
        LLM("ck", block_size=8, page_size=8)
    args = build_parser().parse_args(["serve", "ck", "--block-size", "8"])
    assert EngineArgs.from_cli_args(args).page_size == 8
    assert "--block-size is deprecated and will be removed: use --page-size" in (
        capsys.readouterr().err
    )
    with pytest.raises(SystemExit):
        build_parser().parse_args(["serve", "--help"])
    help_text = capsys.readouterr().out
    assert "--page-size" in help_text and "--block-size" not in help_text
