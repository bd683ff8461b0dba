"""LongBench scoring on tiny hand-computed examples."""

from __future__ import annotations

import hashlib
import json

import pytest

from maskkv_vllm.evaluation import longbench_metrics as lm
from maskkv_vllm.evaluation.longbench_config import (
    DATASET2MAXLEN,
    DATASET2METRIC,
    DATASET2PROMPT,
    LONGBENCH_TASKS,
    PAPER_TASKS,
    check_task,
    task_config,
)


@pytest.fixture
def char_zh(monkeypatch):
    """Score Chinese with the character fallback even where jieba is installed."""
    monkeypatch.setattr(lm, "_jieba", lambda: None)


# ------------------------------------------------------------------ config


def test_templates_and_lengths_are_the_official_files():
    # sha256 of json.dumps(obj, sort_keys=True, ensure_ascii=False) of the official
    # LongBench/config/dataset2prompt.json and dataset2maxlen.json (THUDM/LongBench).
    prompts = json.dumps(DATASET2PROMPT, sort_keys=True, ensure_ascii=False)
    maxlen = json.dumps(DATASET2MAXLEN, sort_keys=True)
    assert hashlib.sha256(prompts.encode()).hexdigest() == (
        "e7d865d712fe45e2455f5e864ac474001d7758d68d349e76ffbcdd382483358f"
    )
    assert hashlib.sha256(maxlen.encode()).hexdigest() == (
        "39a79d9491ead3dc8bcea6dbd8b963b29248eb4c344dde1e176b0a58b4e758a9"
    )
    assert DATASET2MAXLEN == {
        "narrativeqa": 128, "qasper": 128, "multifieldqa_en": 64,
        "multifieldqa_zh": 64, "hotpotqa": 32, "2wikimqa": 32, "musique": 32,
        "dureader": 128, "gov_report": 512, "qmsum": 512, "multi_news": 512,
        "vcsum": 512, "trec": 64, "triviaqa": 32, "samsum": 128, "lsht": 64,
        "passage_count": 32, "passage_retrieval_en": 32,
        "passage_retrieval_zh": 32, "lcc": 64, "repobench-p": 64,
    }  # fmt: skip
    # The official narrativeqa template really says "asconcisely".
    assert "answer the question asconcisely" in DATASET2PROMPT["narrativeqa"].lower()
    assert DATASET2PROMPT["lcc"] == (
        "Please complete the code given below. \n{context}Next line of code:\n"
    )


def test_task_tables_cover_the_21_tasks_and_the_paper_14():
    assert len(LONGBENCH_TASKS) == 21 and len(PAPER_TASKS) == 14
    assert set(DATASET2PROMPT) == set(DATASET2METRIC) == set(LONGBENCH_TASKS)
    assert set(PAPER_TASKS) <= set(LONGBENCH_TASKS)
    trec, qasper = task_config("trec"), task_config("qasper")
    assert (trec.metric, trec.chat, trec.first_line, trec.in_paper) == (
        "classification",
        False,
        True,
        True,
    )
    assert (qasper.metric, qasper.chat, qasper.first_line) == ("qa_f1", True, False)
    assert task_config("lcc").chat is False and task_config("lcc").language == "code"
    assert task_config("vcsum").language == "zh" and not task_config("vcsum").in_paper
    with pytest.raises(ValueError, match="unknown LongBench task 'nope'"):
        check_task("nope")


# ------------------------------------------------------------------- QA F1


def test_qa_f1_by_hand():
    # "The cat sat" -> lower, no punctuation, no article -> "cat sat" (2 tokens).
    # "a cat sat down" -> "cat sat down" (3 tokens). Common: cat, sat = 2.
    # P = 2/2 = 1, R = 2/3, F1 = 2 * 1 * 2/3 / (1 + 2/3) = (4/3) / (5/3) = 0.8.
    assert lm.qa_f1_score("The cat sat", "a cat sat down") == pytest.approx(0.8)
    assert lm.normalize_answer("The  Cat, sat!") == "cat sat"
    assert lm.qa_f1_score("Paris!", "paris") == 1.0
    assert lm.qa_f1_score("London", "Paris") == 0.0
    # Repeated tokens count as a multiset: pred "cat cat" vs "cat":
    # common 1, P = 1/2, R = 1, F1 = 2/3.
    assert lm.qa_f1_score("cat cat", "cat") == pytest.approx(2 / 3)


def test_qa_f1_zh_by_hand(char_zh):
    # Characters: pred 北 京 。 -> "。" normalised away -> [北, 京];
    # answer [北, 京, 市]. Common 2, P = 2/2, R = 2/3, F1 = 0.8.
    assert lm.qa_f1_zh_score("北京。", "北京市") == pytest.approx(0.8)
    assert lm.qa_f1_zh_score("上海", "北京") == 0.0
    assert lm.zh_tokenize("GPU是A100") == ["GPU", "是", "A100"]


# ------------------------------------------------------------------ ROUGE-L


def test_rouge_l_one_sentence_no_repeats():
    # pred: police killed the gunman (4 words); ref: police kill the gunman (4).
    # LCS = police the gunman = 3. P = 3/4, R = 3/4, F = 0.75.
    f = lm.rouge_score("police killed the gunman", "police kill the gunman")
    assert f == pytest.approx(0.75, abs=1e-7)


def test_rouge_l_counts_distinct_words_like_the_rouge_package():
    # pred: the cat was found under the bed; ref: the cat was under the bed.
    # LCS = "the cat was under the bed" (6 tokens) but the package counts word
    # sets: LCS words {the, cat, was, under, bed} = 5; distinct pred words 6,
    # distinct ref words 5. P = 5/6, R = 5/5, F = 2 * 5/6 / (11/6) = 10/11.
    # (Textbook ROUGE-L would be P = 6/7, R = 6/6, F = 12/13.)
    f = lm.rouge_score("the cat was found under the bed", "the cat was under the bed")
    assert f == pytest.approx(10 / 11, abs=1e-7)


def test_rouge_l_is_a_union_over_sentences():
    # Sentences split at ".": pred [a b, c d], ref [c d, a b].
    # ref "c d": LCS with "a b" = {}, with "c d" = {c, d};
    # ref "a b": with "a b" = {a, b}. Union = 4 words; 4 distinct on each side:
    # P = R = 1, F = 1 (a plain LCS over "a b c d" / "c d a b" would give 0.5).
    assert lm.rouge_score("a b. c d", "c d. a b") == pytest.approx(1.0, abs=1e-7)
    assert lm.rouge_score("", "a b") == 0.0
    assert lm.rouge_score("...", "a b") == 0.0
    assert lm.rouge_score("x y", "a b") == 0.0


def test_rouge_zh_by_hand(char_zh):
    # Characters: pred 今天天气好 -> distinct {今, 天, 气, 好} = 4;
    # ref 今天天气很好 -> distinct 5. LCS 今天天气好 -> words {今, 天, 气, 好} = 4.
    # P = 4/4, R = 4/5, F = 2 * 0.8 / 1.8 = 8/9.
    assert lm.rouge_zh_score("今天天气好", "今天天气很好") == pytest.approx(
        8 / 9, abs=1e-7
    )


# --------------------------------------------------------- classification


def test_classification_by_hand():
    classes = ["Location", "Entity"]
    assert lm.classification_score("Entity", "Entity", all_classes=classes) == 1.0
    # Both class names appear -> 1/2.
    s = lm.classification_score("Entity or Location", "Location", all_classes=classes)
    assert s == 0.5
    assert lm.classification_score("Entity", "Location", all_classes=classes) == 0.0
    # "Human" is a strict substring of the true class: dropped -> 1/1.
    two = ["Human", "Human being"]
    assert lm.classification_score("Human being", "Human being", all_classes=two) == 1
    # Official quirk: removing while iterating skips the next entry, so after
    # "Human" is dropped, "Hum" is never checked: found [Hum, Human being] -> 1/2.
    three = ["Human", "Hum", "Human being"]
    s = lm.classification_score("Human being", "Human being", all_classes=three)
    assert s == 0.5


def test_retrieval_and_count_by_hand():
    assert lm.retrieval_score("Paragraph 3", "Paragraph 3") == 1.0
    # Numbers [3, 12], one right -> 1/2.
    assert lm.retrieval_score("Paragraph 3 or Paragraph 12", "Paragraph 3") == 0.5
    assert lm.retrieval_score("Paragraph 03", "Paragraph 3") == 0.0  # text compare
    assert lm.retrieval_score("no idea", "Paragraph 3") == 0.0
    assert lm.retrieval_zh_score("段落2", "段落2") == 1.0
    assert lm.retrieval_zh_score("答案是段落2，不是段落5", "段落2") == 0.5
    with pytest.raises(ValueError, match="does not match"):
        lm.retrieval_score("Paragraph 1", "the first one")
    # Numbers [7, 9], one equal to 7 -> 1/2.
    assert lm.count_score("There are 7 unique paragraphs out of 9", "7") == 0.5
    assert lm.count_score("7", "7") == 1.0
    assert lm.count_score("seven", "7") == 0.0


def test_code_similarity_by_hand():
    # SequenceMatcher ratio = 2 * M / T. "x = 1" vs "x = 2": matching "x = "
    # (M = 4), T = 5 + 5 = 10 -> 0.8 -> fuzz 80 -> 0.8.
    assert lm.code_sim_score("x = 1", "x = 2") == pytest.approx(0.8)
    # "abc" vs "abd": M = 2, T = 6 -> 0.6667 -> fuzz rounds to 67 -> 0.67.
    assert lm.fuzz_ratio("abc", "abd") == 67
    assert lm.code_sim_score("abc", "abd") == pytest.approx(0.67)
    # The first line without "`", "#" or "//" is the one scored.
    assert lm.first_code_line("\n# add one\n// c\nreturn x + 1\nfoo") == "return x + 1"
    assert lm.code_sim_score("```python\nx = 2\n```", "x = 2") == 1.0
    assert lm.code_sim_score("# only a comment", "x = 2") == 0.0
    assert lm.fuzz_ratio("", "") == 100  # fuzzywuzzy: equal strings first


# ------------------------------------------------------------ per task


def test_max_over_answers_and_first_line_rule():
    pred = "paris\nQuestion: next"
    # triviaqa scores the first line only: "paris" vs "Paris" -> 1.
    assert lm.score_prediction("triviaqa", pred, ["City of Paris", "Paris"]) == 1.0
    # hotpotqa scores it all: "paris question next" (3 tokens);
    # vs "Paris": P = 1/3, R = 1, F1 = 0.5; vs "City of Paris" ("city of paris"):
    # P = R = 1/3, F1 = 1/3. Max = 0.5.
    assert lm.score_prediction("hotpotqa", pred, ["City of Paris", "Paris"]) == 0.5
    # trec: first line "Location" -> only class found -> 1.
    s = lm.score_prediction(
        "trec", "\nLocation\nNumber", ["Location"], ["Location", "Number"]
    )
    assert s == 1.0
    with pytest.raises(ValueError, match="unknown LongBench task"):
        lm.score_prediction("nope", "x", ["x"])
