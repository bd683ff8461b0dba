"""Accuracy per task of an eval (issue 26: a mix's average hid MaskKV keeping needle
and losing kv)."""

from __future__ import annotations

import json

import pytest

from maskkv_vllm.evaluation import by_task
from maskkv_vllm.evaluation.harness import HELD_OUT_SEED
from maskkv_vllm.evaluation.synthetic import make_samples


def a_run() -> dict:
    """4 samples (kv, needle, kv, needle); maskkv misses the second kv at B = 3
    and none at B = 6 (listed first: rows print by rising budget)."""
    samples = make_samples(HELD_OUT_SEED, 4, 64, ("kv", "needle"), 4)
    full = [s.answer for s in samples]
    other = [*full[:2], "0 0 0", full[3]]
    return {"prompt_tokens": 64, "num_samples": 4, "solved_tasks": ["kv", "needle"],
            "drawn": {"samples": 4, "tasks": ["kv", "needle"], "queries": 4},
            "canvas": {"gen_length": 8, "block_length": 8, "steps": 8},
            "budgets": {"0.1": 6, "0.05": 3},
            "answers": {"full": full,
                        "maskkv": {"0.1": full, "0.05": other}}}  # fmt: skip


def test_samples_are_tallied_under_their_own_task():
    assert by_task.by_task(a_run()) == {
        "full": {"kv": (2, 2), "needle": (2, 2)},
        "maskkv@0.1": {"kv": (2, 2), "needle": (2, 2)},
        "maskkv@0.05": {"kv": (1, 2), "needle": (2, 2)},
    }


def test_a_run_it_cannot_redraw_is_refused():
    with pytest.raises(ValueError, match="drew 4 scored samples, eval.json scored 3"):
        by_task.by_task({**a_run(), "num_samples": 3})


def test_main_prints_accuracy_and_retention_per_task(tmp_path, capsys):
    path = tmp_path / "eval.json"
    path.write_text(json.dumps(a_run()))
    by_task.main([str(path)])
    lines = capsys.readouterr().out.splitlines()
    assert lines[1].split("|")[1:] == ["            kv ", "        needle"]
    assert lines[3].split("|") == [f"{'maskkv B=3':>28} ", "   0.50 ( 50%) ",
                                   "   1.00 (100%)"]  # fmt: skip
    assert lines[4].startswith(f"{'maskkv B=6':>28} ")
    assert lines[5].split("|")[1:] == ["             2 ", "             2"]
