"""Issue 26's harder synthetic tasks: several keys in one canvas (an answer over
several diffusion blocks), the question first, and budgets down to B = 1."""

from __future__ import annotations

import json
import random

import pytest

from maskkv_vllm.evaluation import by_block
from maskkv_vllm.evaluation.harness import canvas_params
from maskkv_vllm.evaluation.synthetic import facts, make_sample, make_samples


def test_multi_asks_for_several_keys_and_answers_them_in_order():
    s = make_sample(random.Random(1), "multi", 80, queries=3)
    words = s.prompt.split()
    asked = " ".join(words[words.index("?") + 1 :]).split(" ; ")
    known = facts(words)
    assert len(asked) == 3
    assert s.answer == " ; ".join(" ".join(known[k]) for k in asked)


def test_qfirst_puts_the_question_before_the_records():
    s = make_sample(random.Random(2), "qfirst", 80)
    words = s.prompt.split()
    assert words[0] == "?" and words[2] == ";"
    assert s.answer == " ".join(facts(words[3:])[words[1]])


def test_the_canvas_holds_the_longest_answer_in_whole_blocks():
    samples = make_samples(0, 4, 80, ("kv", "multi"), queries=4)
    # multi: 4 x 3 digits + 3 separators = 15 words, + EOS = 16: two blocks of 8.
    assert canvas_params(samples, None, 8) == {
        "gen_length": 16, "block_length": 8, "steps": 16,
    }  # fmt: skip
    assert canvas_params(samples, None, 5)["gen_length"] == 20  # 4 blocks of 5
    kv = make_samples(0, 2, 80, ("kv",))
    assert canvas_params(kv, None, None) == {
        "gen_length": 8, "block_length": 8, "steps": 8,
    }  # fmt: skip


def test_a_given_canvas_is_kept_or_refused_by_value():
    samples = make_samples(0, 4, 80, ("kv", "multi"), queries=4)  # 15 words
    assert canvas_params(samples, 64, 8) == {
        "gen_length": 64, "block_length": 8, "steps": 64,
    }  # fmt: skip
    with pytest.raises(ValueError, match=r"gen_length=15 cannot hold .*\(15 words"):
        canvas_params(samples, 15, None)
    with pytest.raises(ValueError, match="gen_length=20 is not whole blocks of "
                       "block_length=8"):  # fmt: skip
        canvas_params(samples, 20, 8)


def test_a_bad_task_or_query_count_is_named():
    with pytest.raises(ValueError, match="task='many' is not one of"):
        make_sample(random.Random(0), "many", 80)
    with pytest.raises(ValueError, match="queries=0"):
        make_sample(random.Random(0), "multi", 80, queries=0)


def test_eval_takes_tasks_absolute_budgets_and_a_block(tmp_path, capsys):
    from maskkv_vllm.cli import main

    out = tmp_path / "ev"
    code = main(
        ["eval", "--model", "retrieval", "--tasks", "kv", "multi", "--queries", "2",
         "--block-length", "4", "--gen-length", "12", "--samples", "2",
         "--prompt-tokens", "64", "--policies", "maskkv", "--fractions", "0.25",
         "--budgets", "1", "--solved-at", "0", "--device", "cpu",
         "--out-dir", str(out)]
    )  # fmt: skip
    assert code == 0
    table = capsys.readouterr().out
    assert "B=1" in table and "B=16" in table and "multi" in table
    run = json.loads((out / "eval.json").read_text())
    assert run["canvas"] == {"gen_length": 12, "block_length": 4, "steps": 12}
    assert run["drawn"] == {"samples": 2, "tasks": ["kv", "multi"], "queries": 2}
    # The samples drawn again are those scored: one multi of 2 keys, in blocks 0-1.
    rows = by_block.by_block(run)
    assert [asked for _, asked in rows["full"]] == [1, 1, 0]
    assert rows.keys() == {"full", "maskkv@0.25", "maskkv@0.015625"}


def test_vt_hops_set_the_chain_length_and_default_to_two_or_three():
    def hops_of(sample):  # statements "xB = xA ;" of the queried chain, counted back
        known = dict(
            (w[0], w[2])
            for w in (sample.prompt.split()[i : i + 3]
                      for i in range(len(sample.prompt.split()) - 2))
            if w[1] == "=" and w[0].startswith("x")
        )  # fmt: skip
        var, n = sample.prompt.split()[-1], 0
        while known[var].startswith("x"):
            var, n = known[var], n + 1
        assert known[var] == sample.answer
        return n

    rng = random.Random(0)
    assert {hops_of(make_sample(rng, "vt", 120, hops=(1,))) for _ in range(20)} == {1}
    assert {hops_of(make_sample(rng, "vt", 120)) for _ in range(40)} == {2, 3}


def test_vt_hops_outside_one_to_three_are_named():
    with pytest.raises(ValueError, match=r"hops=\(4,\)"):
        make_sample(random.Random(0), "vt", 120, hops=(4,))


def test_eval_refuses_evicting_policies_with_dual_refresh_before_any_prompt(
    tmp_path, monkeypatch
):
    from maskkv_vllm.cli import main
    from maskkv_vllm.evaluation import harness

    def never(*a, **k):
        raise AssertionError("no prompt may run")

    monkeypatch.setattr(harness, "evaluate", never)
    argv = ["eval", "--model", "retrieval", "--canvas-cache", "dual_refresh",
            "--policies", "maskkv", "full", "snapkv", "--device", "cpu",
            "--out-dir", str(tmp_path / "ev")]  # fmt: skip
    with pytest.raises(SystemExit, match=r"--canvas-cache dual_refresh .*"
                       r"--policies maskkv snapkv evict"):  # fmt: skip
        main(argv)
    assert not (tmp_path / "ev").exists()


def test_eval_with_no_policy_named_scores_the_full_cache_alone(tmp_path, capsys):
    from maskkv_vllm.cli import main

    code = main(
        ["eval", "--model", "retrieval", "--canvas-cache", "dual_refresh",
         "--block-length", "2", "--tasks", "kv", "--samples", "2",
         "--prompt-tokens", "64", "--policies", "--solved-at", "0",
         "--device", "cpu", "--out-dir", str(tmp_path / "ev")]
    )  # fmt: skip
    assert code == 0
    table = capsys.readouterr().out
    assert "full cache accuracy" in table and "retention" not in table
    assert (tmp_path / "ev" / "eval.json").exists()


def test_vt_chains_set_the_distractors():
    s = make_sample(random.Random(0), "vt", 200, hops=(1,), chains=5)
    words = s.prompt.split()
    starts = [words[i + 2] for i in range(len(words) - 2)
              if words[i + 1] == "=" and words[i + 2].isdigit()]  # fmt: skip
    assert len(starts) == len(set(starts)) == 5 and s.answer in starts
    with pytest.raises(ValueError, match=r"chains=11 must be within \[1, 10\]"):
        make_sample(random.Random(0), "vt", 200, chains=11)
