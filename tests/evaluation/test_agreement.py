"""Token agreement of two eval runs (issue 28: a canvas cache against ``none``)."""

from __future__ import annotations

import json

import pytest

from maskkv_vllm.evaluation import agreement


def run(full, snapkv, **over):
    out = {"prompt_tokens": 128, "num_samples": len(full), "solved_tasks": ["multi"],
           "answers": {"full": full, "snapkv": {"0.25": snapkv}}}  # fmt: skip
    return {**out, **over}


def test_word_agreement_counts_positions_over_the_longer_answer():
    assert agreement.word_agreement("1 2 3 ; 4 5 6", "1 2 3 ; 4 0 6") == (6, 7)
    assert agreement.word_agreement("1 2 3", "1 2 3 ; 4") == (3, 5)
    assert agreement.word_agreement("", "") == (0, 0)


def test_agreement_per_row_both_runs_answered():
    a = run(["1 2 3", "4 5 6"], ["1 2 3", "7 7 7"])
    b = run(["1 2 3", "4 5 0"], ["1 2 3", "7 7 7"])
    b["answers"]["maskkv"] = {"0.25": ["1 2 3", "4 5 6"]}  # not in a: no row
    assert agreement.agreement(a, b) == {
        "full": {"answers": 0.5, "words": 5 / 6},
        "snapkv@0.25": {"answers": 1.0, "words": 1.0},
    }


@pytest.mark.parametrize(
    ("over", "match"),
    [
        ({"prompt_tokens": 256}, "differ in prompt_tokens: 128 vs 256"),
        ({"solved_tasks": ["kv"]}, r"differ in solved_tasks: \['multi'\] vs \['kv'\]"),
        ({"drawn": {"queries": 4}}, r"differ in drawn: \{'queries': 2\} vs"),
        ({"canvas": {"gen_length": 16}}, "differ in canvas: "),
    ],
)
def test_runs_over_other_samples_are_refused(over, match):
    a = run(["1 2 3"], ["1 2 3"], drawn={"queries": 2}, canvas={"gen_length": 8})
    same = run(["1 2 3"], ["1 2 3"], drawn={"queries": 2}, canvas={"gen_length": 8})
    agreement.agreement(a, same)
    agreement.agreement(a, run(["1 2 3"], ["1 2 3"]))  # an older run records neither
    with pytest.raises(ValueError, match=match):
        agreement.agreement(a, {**same, **over})


def test_a_run_without_answers_is_refused():
    a = run(["1 2 3"], ["1 2 3"])
    b = {k: v for k, v in a.items() if k != "answers"}
    with pytest.raises(ValueError, match="a run has no answers"):
        agreement.agreement(a, b)


def test_main_prints_a_row_per_policy_and_budget(tmp_path, capsys):
    paths = []
    for name, full in (("a", ["1 2 3", "4"]), ("b", ["1 2 3", "5"])):
        paths.append(tmp_path / f"{name}.json")
        paths[-1].write_text(json.dumps(run(full, ["9", "9"])))
    rows = agreement.main([str(p) for p in paths])
    assert rows["full"] == {"answers": 0.5, "words": 0.75}
    out = capsys.readouterr().out
    assert "                        full |       0.500 |     0.750" in out
    assert "                 snapkv@0.25 |       1.000 |     1.000" in out
