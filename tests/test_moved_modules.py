"""Module paths moved by the renovation (issue 16) still import, with a warning."""

from __future__ import annotations

import importlib
import subprocess
import sys

import pytest

from maskkv_vllm import _moved


@pytest.mark.parametrize(
    ("old", "new"),
    [
        ("maskkv_vllm.cache.block_pool", "maskkv_vllm.paging.block_pool"),
        ("maskkv_vllm.kv.paged_kv_cache", "maskkv_vllm.kv_cache.paged_kv_cache"),
        ("maskkv_vllm.kv.prompt_kv", "maskkv_vllm.kv_cache.dense_prompt_cache"),
        ("maskkv_vllm.models.bert", "maskkv_vllm.testbeds.bert"),
        ("maskkv_vllm.evaluation.bert_tasks", "maskkv_vllm.testbeds.bert.tasks"),
        (
            "maskkv_vllm.vllm_adapter.workers",
            "maskkv_vllm.vllm_adapter.worker.selection",
        ),
        (
            "maskkv_vllm.vllm_adapter.footprint",
            "maskkv_vllm.vllm_adapter.core.footprint",
        ),
    ],
)
def test_an_old_module_path_is_the_new_module_with_a_warning(old, new):
    # A fresh interpreter: this one may have imported the old name already.
    code = (
        "import importlib, warnings\n"
        f"new = importlib.import_module({new!r})\n"
        "with warnings.catch_warnings(record=True) as w:\n"
        "    warnings.simplefilter('always')\n"
        f"    old = importlib.import_module({old!r})\n"
        "assert old is new, (old, new)\n"
        f"assert new.__spec__.name == {new!r}\n"
        "msgs = [str(x.message) for x in w if x.category is DeprecationWarning]\n"
        "print(msgs[0])\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    # The first warning names the first moved name on the path (maybe its package).
    assert old.startswith(out.split(" moved to ")[0])
    assert "moved to" in out and "goes away in maskkv-vllm 0.3" in out


def test_from_the_old_package_import_a_moved_module():
    with pytest.warns(DeprecationWarning):
        from maskkv_vllm.kv import prompt_kv
    new = importlib.import_module("maskkv_vllm.kv_cache.dense_prompt_cache")
    assert prompt_kv is new


def test_names_that_did_not_move_are_left_alone():
    assert _moved.new_name("maskkv_vllm.kv_cache.paged_kv_cache") is None
    assert _moved.new_name("maskkv_vllm.cachex") is None
    assert _moved.new_name("maskkv_vllm.vllm_adapter.worker") is None
    assert _moved.new_name("maskkv_vllm.kv.x.y") == "maskkv_vllm.kv_cache.x.y"
