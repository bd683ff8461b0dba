"""benchmarks/window_probe.py: which query rows find the answer (issue 26)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCH))  # the probe imports train_model beside it
spec = importlib.util.spec_from_file_location("window_probe", BENCH / "window_probe.py")
wp = importlib.util.module_from_spec(spec)
spec.loader.exec_module(wp)


def test_answer_columns_are_the_queried_record_s_digits():
    # BOS k1 : 4 5 6 ; k2 : 7 8 9 ; ? k2   (ids stand in for words)
    prompt = [0, 21, 6, 14, 15, 16, 7, 22, 6, 17, 18, 19, 7, 8, 22]
    assert wp.answer_columns(prompt) == [9, 10, 11]


def test_voter_rows_of_each_group():
    m, length = 40, 8
    assert wp.voter_rows("mask", m, length) == slice(40, 48)
    assert wp.voter_rows("window", m, length) == slice(8, 40)
    assert wp.voter_rows("query", m, length) == slice(39, 40)
    assert wp.voter_rows("window+mask", m, length) == slice(16, 48)


def test_summarise_picks_the_head_with_the_best_mean_share():
    def prompt(shares_ranks):
        return {1: {g: shares_ranks for g in wp.GROUPS}}

    rows = [prompt([(0.1, 9), (0.5, 2)]), prompt([(0.3, 7), (0.3, 4)]),
            prompt([(0.2, 5), (0.4, 30)])]  # fmt: skip
    got = wp.summarise(rows)[1]["mask"]
    assert got == {"head": 1, "share": pytest.approx(0.4), "worst_digit_rank": 4}


def test_on_the_shipped_model_only_the_mask_queries_find_the_answer():
    # What the README says of the testbed (2026-12-05 probe: layer 1, 1024 tokens,
    # mask 0.32 vs window 0.005): here 2 prompts of 256 tokens.
    from maskkv_vllm.evaluation.synthetic import word_tokenizer
    from maskkv_vllm.models.builtin import resolve_model
    from maskkv_vllm.models.loader import load_model

    model = load_model(resolve_model("retrieval")).float().eval()
    tok = word_tokenizer()
    rng = wp.random.Random(wp.tm.EVAL_SEED + 256)
    prompts = [wp.tm.prompt_targets(rng, tok, "kv", 256, 0)[0] for _ in range(2)]
    layer1 = wp.summarise([wp.probe_prompt(model, p) for p in prompts])[1]
    assert layer1["mask"]["share"] > 0.2 and layer1["mask"]["worst_digit_rank"] <= 8
    assert layer1["window"]["share"] < 0.05 and layer1["query"]["share"] < 0.05
    for group in wp.GROUPS:
        assert 1 <= layer1[group]["worst_digit_rank"] <= len(min(prompts, key=len))


def test_vt_spans_are_the_queried_statement_and_the_one_it_names():
    # BOS x1 = 4 ; x2 = x1 ; k1 : 5 6 7 ; x3 = 9 ; ? x2   (ids stand in for words)
    X1, X2, X3, EQ, SEMI = 31, 32, 33, 5, 7
    prompt = [0, X1, EQ, 14, SEMI, X2, EQ, X1, SEMI, 21, 6, 15, 16, 17, SEMI,
              X3, EQ, 19, SEMI, 8, X2]  # fmt: skip
    assert wp.vt_spans(prompt, EQ) == {"hop1": [5, 6, 7, 8], "hop2": [1, 2, 3, 4]}
    assert wp.spans_of("vt", prompt, EQ)["hop1"] == [5, 6, 7, 8]


def test_the_vt_probe_reports_each_hop_per_layer_and_group(tmp_path):
    ckpt, out = tmp_path / "ck", tmp_path / "probe.json"
    wp.tm.main(["--out", str(ckpt), "--layers", "2", "--heads", "2", "--head-dim",
                "16", "--mlp", "32", "--batch", "2", "--seeds", "0", "--steps", "1",
                "--start-length", "32", "--final-length", "32", "--eval-samples",
                "1", "--final-samples", "1", "--report-lengths", "32",
                "--prior-pairs", "1", "2"])  # fmt: skip
    report = wp.main(["--model", str(ckpt), "--prompt-tokens", "64",
                      "--samples", "2", "--tasks", "vt", "--vt-hops", "1",
                      "--out", str(out)])  # fmt: skip
    spans = report["vt"]["span_shares"]
    assert set(spans) == {0, 1}  # the checkpoint's two layers
    assert set(spans[0]) == {"canvas", "hop1", "hop2"}
    assert set(spans[0]["hop1"]) == set(wp.GROUPS)
    assert all(0 <= c["share"] <= 1 for s in spans[0].values() for c in s.values())
    assert "uniform_share" not in report["vt"] and out.is_file()
