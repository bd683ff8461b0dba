"""Accuracy per answer block of a multi eval (issue 26, item 3: does step 0's
selection hold late in the answer?)."""

from __future__ import annotations

import json

import pytest

from maskkv_vllm.evaluation import by_block
from maskkv_vllm.evaluation.harness import HELD_OUT_SEED
from maskkv_vllm.evaluation.synthetic import make_samples


def test_key_hits_read_each_key_s_three_digits_in_place():
    want = "1 2 3 ; 4 5 6 ; 7 8 9"
    assert by_block.key_hits(want, want) == [True, True, True]
    assert by_block.key_hits("1 2 3 ; 4 5 0 ; 7 8 9", want) == [True, False, True]
    assert by_block.key_hits("1 2 3", want) == [True, False, False]  # cut short


def a_run(late_wrong: bool) -> dict:
    """4 samples (kv, multi, kv, multi), 4 keys each multi, 2 blocks of 8."""
    samples = make_samples(HELD_OUT_SEED, 4, 64, ("kv", "multi"), 4)
    full = [s.answer for s in samples]
    other = [
        s.answer[:14] + " 0 0 0 ; 0 0 0"
        if s.task == "multi" and late_wrong
        else s.answer
        for s in samples
    ]
    return {"prompt_tokens": 64, "num_samples": 4, "solved_tasks": ["kv", "multi"],
            "drawn": {"samples": 4, "tasks": ["kv", "multi"], "queries": 4},
            "canvas": {"gen_length": 16, "block_length": 8, "steps": 16},
            "answers": {"full": full, "maskkv": {"0.05": other}}}  # fmt: skip


def test_keys_are_tallied_in_the_block_of_their_last_digit():
    assert by_block.by_block(a_run(late_wrong=True)) == {
        "full": [(4, 4), (4, 4)],  # keys 0-1 in block 0, keys 2-3 in block 1
        "maskkv@0.05": [(4, 4), (0, 4)],
    }


@pytest.mark.parametrize(
    ("over", "match"),
    [
        ({"drawn": None}, "records no drawn samples"),
        ({"num_samples": 3}, "drew 4 scored samples, eval.json scored 3"),
        ({"solved_tasks": ["kv"], "num_samples": 2}, "no multi sample was scored"),
    ],
)
def test_a_run_it_cannot_redraw_is_refused(over, match):
    run = {**a_run(False), **over}
    run = {k: v for k, v in run.items() if v is not None}
    with pytest.raises(ValueError, match=match):
        by_block.by_block(run)


def test_main_prints_a_column_per_block(tmp_path, capsys):
    path = tmp_path / "eval.json"
    path.write_text(json.dumps(a_run(late_wrong=True)))
    by_block.main([str(path)])
    lines = capsys.readouterr().out.splitlines()
    assert "block  0 | block  1" in lines[0]
    assert lines[2].split("|")[1:] == ["    1.000 ", "    0.000"]
    assert lines[3].split("|")[1:] == ["        4 ", "        4"]
