"""The eval harness and the synthetic tasks."""

from __future__ import annotations

import json
import random
from types import SimpleNamespace

import pytest

from maskkv_vllm.cli import main
from maskkv_vllm.engine.llm import LLM
from maskkv_vllm.evaluation import harness
from maskkv_vllm.evaluation.synthetic import (
    FILLER,
    exact_match,
    facts,
    make_sample,
    make_samples,
    with_recall_queries,
    word_tokenizer,
)


def test_synthetic_tasks_are_answerable_from_the_prompt():
    tok = word_tokenizer()
    for s in make_samples(seed=5, count=20, num_tokens=300):
        words = s.prompt.split()
        query = words[-1]
        if s.task in ("kv", "needle"):
            i = words.index(query)  # the record of the queried key
            assert " ".join(words[i + 2 : i + 5]) == s.answer
        else:
            # Follow the chain back from the queried variable to its digit.
            value = query
            while not value.isdigit():
                value = words[words.index(value, 0, len(words) - 1) + 2]
            assert value == s.answer
        ids = tok.encode(s.prompt).ids
        assert 250 <= len(ids) <= 320 and tok.token_to_id("<|endoftext|>") not in ids
    assert make_samples(5, 3, 100) == make_samples(5, 3, 100)
    with pytest.raises(ValueError, match="task='qa' is not one of"):
        make_sample(random.Random(0), "qa", 100)


def test_needle_hides_one_to_four_records_in_fixed_filler():
    samples = make_samples(seed=2, count=12, num_tokens=120, tasks=("needle",))
    counts = []
    for s in samples:
        words = s.prompt.split()
        known = facts(words)
        counts.append(len(known))
        assert known[words[-1]] == s.answer.split()
        # Apart from the needles and the final query, only the filler sentence.
        rest = [w for w in words[:-2] if w not in known and w != ":"]
        rest = [w for w in rest if not w.isdigit()]
        assert set(rest) <= set(FILLER.split())
    assert set(counts) == {1, 2, 3, 4}
    # Seeded: four needles in a 40-token prompt leave room for one filler sentence.
    one = make_sample(random.Random(0), "needle", 40)
    assert one.prompt == (
        f"{FILLER} k265 : 8 2 4 ; k497 : 2 1 9 ; k430 : 6 4 7 ; k041 : 5 9 3 ; ? k430"
    )
    assert one.answer == "6 4 7"


def test_vt_distractor_chain_starts_from_another_digit():
    for s in make_samples(seed=3, count=20, num_tokens=200, tasks=("vt",)):
        words = s.prompt.split()
        starts = [words[i + 2] for i, w in enumerate(words[:-2])
                  if words[i + 1] == "=" and words[i + 2].isdigit()]  # fmt: skip
        assert len(starts) == 2 and len(set(starts)) == 2 and s.answer in starts


def test_recall_queries_are_answered_from_the_prompt():
    prompt = "k001 : 1 2 3 ; x01 = 4 ; x02 = x01 ; k002 : 5 6 7 ; ? k002"
    known = facts(prompt.split())
    assert known == {"k001": ["1", "2", "3"], "x01": ["4"], "x02": ["4"],
                     "k002": ["5", "6", "7"]}  # fmt: skip
    words, targets = with_recall_queries(random.Random(0), prompt, 2)
    # Two answered queries before the final one, whose answer is never given away.
    assert " ".join(words[20:]) == "? x01 4 ; ? x02 4 ; ? k002"
    assert targets == [22, 26] and [words[i] for i in targets] == ["4", "4"]
    words, targets = with_recall_queries(random.Random(0), prompt, 10)
    assert len(targets) == 1 + 1 + 3 and "k002 5" not in " ".join(words[20:])


def test_exact_match_normalises_whitespace():
    assert exact_match(" 1  2 3", "1 2 3") and not exact_match("1 2", "1 2 3")


def test_evaluate_writes_table_json_and_plot(tiny_dir, tmp_path):
    llm = LLM(str(tiny_dir), kv_cache_memory="16MiB")
    result = harness.evaluate(
        llm, num_samples=4, prompt_tokens=96, policies=("maskkv", "streaming"),
        fractions=(0.05, 0.25), solved_at=0,
    )  # fmt: skip
    assert result.budgets == {0.05: 5, 0.25: 24}
    assert set(result.accuracy) == {"maskkv", "streaming"}
    assert all(0 <= a <= 1 for accs in result.accuracy.values() for a in accs.values())
    harness.write_outputs(result, tmp_path, "test")
    data = json.loads((tmp_path / "eval.json").read_text())
    assert data["budgets"] == {"0.05": 5, "0.25": 24}
    assert (tmp_path / "eval.png").stat().st_size > 1000
    assert "maskkv" in (tmp_path / "eval.txt").read_text()
    assert (
        llm.engine.kv_cache_manager.pool.num_free_pages
        == llm.engine.kv_cache_manager.pool.num_usable_pages
    )


def test_eval_cli(tiny_dir, tmp_path, capsys):
    argv = ["eval", "--model", str(tiny_dir), "--samples", "2", "--prompt-tokens",
            "64", "--fractions", "0.1", "--policies", "snapkv", "--solved-at", "0",
            "--out-dir", str(tmp_path)]  # fmt: skip
    assert main(argv) == 0
    assert "snapkv" in capsys.readouterr().out
    assert (tmp_path / "eval.png").is_file()


class Oracle:
    """A stand-in LLM that answers the samples of ``full``'s tasks with the full
    cache and those of ``evicting``'s with any other policy."""

    def __init__(self, samples, full=("kv", "needle"), evicting=("kv",)):
        self.truth = {s.prompt: s for s in samples}
        self.full, self.evicting = full, evicting

    def generate(self, prompts, params, use_tqdm=False):
        tasks = self.full if params.kv_policy == "full" else self.evicting
        outs = []
        for p in prompts:
            s = self.truth[p]
            outs.append(SimpleNamespace(text=s.answer if s.task in tasks else "x"))
        return outs


def test_retention_counts_only_the_tasks_the_full_cache_solves():
    # Issue 26: vt (full cache 0) no longer dilutes accuracy and retention.
    samples = make_samples(harness.HELD_OUT_SEED, 6, 64)
    result = harness.evaluate(Oracle(samples), 6, 64, ("snapkv",), (0.25,))
    assert result.per_task_full == {"kv": 1.0, "needle": 1.0, "vt": 0.0}
    assert result.solved_tasks == ["kv", "needle"] and result.num_samples == 4
    assert result.full_accuracy == 1.0
    assert result.accuracy == {"snapkv": {0.25: 0.5}}
    assert result.retention("snapkv", 0.25) == 0.5
    text = harness.format_table(result)
    assert "4 held-out samples of kv, needle" in text
    assert "not scored (full cache below 0.5): vt" in text
    everything = harness.evaluate(
        Oracle(samples), 6, 64, ("snapkv",), (0.25,), solved_at=0
    )
    assert everything.num_samples == 6 and everything.accuracy == {
        "snapkv": {0.25: 2 / 6}
    }
    assert everything.full_accuracy == 4 / 6


def test_evaluate_refuses_when_the_full_cache_solves_nothing():
    oracle = Oracle(make_samples(harness.HELD_OUT_SEED, 3, 64), full=())
    match = r"solves no task at solved_at=0.5 \(kv 0.00, needle 0.00, vt 0.00\)"
    with pytest.raises(ValueError, match=match):
        harness.evaluate(oracle, 3, 64, ("snapkv",), (0.25,))
    with pytest.raises(ValueError, match="solved_at=1.5 must be within"):
        harness.evaluate(oracle, 3, 64, solved_at=1.5)


def test_the_answers_of_the_scored_samples_are_kept_in_sample_order():
    samples = make_samples(harness.HELD_OUT_SEED, 6, 64)
    result = harness.evaluate(Oracle(samples), 6, 64, ("snapkv",), (0.25,))
    scored = [s for s in samples if s.task != "vt"]
    assert result.full_answers == [s.answer for s in scored]
    assert result.answers == {
        "snapkv": {0.25: [s.answer if s.task == "kv" else "x" for s in scored]}
    }
    data = result.to_json()["answers"]
    assert data["full"] == result.full_answers
    assert data["snapkv"] == {"0.25": result.answers["snapkv"][0.25]}
