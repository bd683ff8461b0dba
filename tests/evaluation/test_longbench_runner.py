"""LongBench runner: truncation, prompts, sampling, and an end-to-end fake run."""

from __future__ import annotations

import dataclasses
import json
from types import SimpleNamespace

import pytest

from maskkv_vllm.engine.llm import LLM
from maskkv_vllm.evaluation import longbench as lb
from maskkv_vllm.evaluation.longbench_config import LONGBENCH_TASKS, task_config
from maskkv_vllm.evaluation.longbench_context import engine_facts, warn_if_unscaled
from maskkv_vllm.models.tiny import byte_tokenizer, tiny_config, write_tiny_checkpoint
from maskkv_vllm.models.tokenizer import Tokenizer


@pytest.fixture(scope="module")
def tok():
    """Byte-level tokenizer: one token per ASCII character, BOS = 256."""
    return Tokenizer(byte_tokenizer(), tiny_config())


def fake_engine(max_model_len=4096, kv_policy="full", kv_budget=None, rope_scaling=1.0):
    """What ``engine_facts`` reads of an ``LLMEngine``: a 4096-token LLaDA."""
    return SimpleNamespace(
        config=SimpleNamespace(
            rope_scaling=rope_scaling,
            kv_policy=kv_policy,
            kv_budget=kv_budget,
            canvas_cache="none",
            cache=SimpleNamespace(prompt_refresh_interval=None),
        ),
        model=SimpleNamespace(config=SimpleNamespace(max_sequence_length=4096)),
        model_runner=SimpleNamespace(max_model_len=max_model_len),
    )


class FakeLLM:
    """``generate`` answers each prompt with the next fixed text."""

    def __init__(self, tokenizer, texts, **engine):
        self.tokenizer = tokenizer
        self.texts = list(texts)
        self.calls = []
        self.engine = fake_engine(**engine)

    def generate(self, prompts, params, use_tqdm=True):
        self.calls.append((prompts, params))
        return [
            SimpleNamespace(text=self.texts.pop(0), finish_reason="stop", error=None)
            for _ in prompts
        ]


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))


def row(i, context, question, answers, all_classes=None, dataset="x"):
    return {
        "input": question,
        "context": context,
        "answers": answers,
        "all_classes": all_classes,
        "length": len(context.split()),
        "dataset": dataset,
        "language": "en",
        "_id": f"id{i}",
    }


@pytest.fixture
def data_dir(tmp_path):
    d = tmp_path / "data"
    d.mkdir()
    write_jsonl(
        d / "hotpotqa.jsonl",
        [
            row(0, "Paris is in France.", "Capital of France?", ["Paris"]),
            row(1, "A cat sat down.", "What happened?", ["a cat sat down"]),
        ],
    )
    classes = ["Location", "Number"]
    write_jsonl(
        d / "trec.jsonl",
        [
            row(0, "Q: Where? Type: Location", "Where is it?", ["Location"], classes),
            row(1, "Q: How many? Type: Number", "How many?", ["Number"], classes),
        ],
    )
    return d


# ------------------------------------------------------------- prompts


def test_truncate_middle_on_ints():
    ids = list(range(10))
    assert lb.truncate_middle(ids, 6) == [0, 1, 2, 7, 8, 9]
    assert lb.truncate_middle(ids, 5) == [0, 1, 8, 9]  # odd: 2 + 2, as pred.py
    assert lb.truncate_middle(ids, 10) == ids
    assert lb.truncate_middle(ids, 100) == ids
    with pytest.raises(ValueError, match="at least 2"):
        lb.truncate_middle(ids, 1)


def test_format_prompt_of_one_row():
    r = row(0, "CTX", "Q?", ["A"])
    assert lb.format_prompt("trec", r) == (
        "Please determine the type of the question below. "
        "Here are some examples of questions.\n\nCTX\nQ?"
    )
    assert lb.format_prompt("lcc", r) == (
        "Please complete the code given below. \nCTXNext line of code:\n"
    )
    with pytest.raises(ValueError, match="no field 'input'"):
        lb.format_prompt("trec", {"context": "CTX"})


def test_encode_prompt_truncates_before_the_chat_template(tok):
    # 10 byte tokens > 6: keep "abc" + "hij".
    plain = lb.encode_prompt(tok, "trec", "abcdefghij", 6)
    assert plain == tok.encode("abchij") and plain[0] == tok.bos_token_id
    assert tok.decode(plain) == "abchij"
    chat = lb.encode_prompt(tok, "qasper", "abcdefghij", 6)
    assert chat == tok.encode_chat([{"role": "user", "content": "abchij"}])
    # Short prompts pass through whole.
    assert lb.encode_prompt(tok, "lcc", "abc", 6) == tok.encode("abc")


def test_sampling_params_per_task():
    assert lb.gen_length_for(30, 8) == 32 and lb.gen_length_for(512, 8) == 512
    sp = lb.task_sampling_params(task_config("gov_report"))
    assert (sp.gen_length, sp.block_length, sp.steps) == (512, 8, 512)
    sp = lb.task_sampling_params(task_config("hotpotqa"), block_length=32)
    assert (sp.gen_length, sp.steps) == (32, 32)
    sp = lb.task_sampling_params(task_config("trec"), steps_per_block=2)
    assert (sp.gen_length, sp.steps) == (64, 16)  # 8 blocks x 2 steps
    for name in LONGBENCH_TASKS:  # every task gives valid params
        lb.task_sampling_params(task_config(name), block_length=32)


def test_resolve_tasks():
    assert len(lb.resolve_tasks(None)) == 14 and len(lb.resolve_tasks("all")) == 21
    assert lb.resolve_tasks(["trec", "paper"])[0] == "trec"
    assert len(lb.resolve_tasks(["trec", "paper"])) == 14
    with pytest.raises(ValueError, match="unknown LongBench task 'nope'"):
        lb.resolve_tasks(["trec", "nope"])


# -------------------------------------------------------------- runner


def test_run_longbench_end_to_end(tok, data_dir, tmp_path):
    llm = FakeLLM(
        tok,
        [
            "Paris",  # hotpotqa row 0: F1 1
            "The cat sat",  # row 1: F1 0.8 (see the metrics tests)
            "Location\nNumber",  # trec row 0: first line "Location" -> 1
            "Location or Number",  # row 1: two classes found -> 1/2
        ],
    )
    out = tmp_path / "res" / "results.json"
    res = lb.run_longbench(llm, data_dir, ["hotpotqa", "trec"], 3500, out=out)
    # The engine's default policy is full: one run, nothing to retain.
    assert list(res["runs"]) == ["full"] and res["retention"] == {}
    full = res["runs"]["full"]
    # hotpotqa: (1 + 0.8) / 2 = 90; trec: (1 + 0.5) / 2 = 75; average 82.5.
    assert full["scores"] == {"hotpotqa": 90.0, "trec": 75.0}
    assert full["average"] == 82.5
    assert json.loads(out.read_text()) == res
    samples = full["tasks"]["hotpotqa"]["samples"]
    assert [s["score"] for s in samples] == [1.0, pytest.approx(0.8)]
    hot = res["tasks"]["hotpotqa"]
    assert samples[1]["_id"] == "id1" and hot["chat_template"] is True
    assert (hot["gen_length"], hot["steps"], hot["max_prompt_tokens"]) == (32, 32, 3500)
    (hp, hparams), (tp, tparams) = llm.calls
    assert (hparams.gen_length, hparams.block_length, hparams.steps) == (32, 8, 32)
    assert (tparams.gen_length, tparams.steps) == (64, 64)
    assert hparams.kv_policy == "full"
    # hotpotqa is chat-wrapped, trec is plain BOS + text.
    first = lb.format_prompt(
        "hotpotqa", row(0, "Paris is in France.", "Capital of France?", ["Paris"])
    )
    assert hp[0] == tok.encode_chat([{"role": "user", "content": first}])
    assert tok.decode(tp[1]).endswith("Type: Number\nHow many?")
    assert tp[1][0] == tok.bos_token_id and tok.eot_token_id not in tp[1]


def test_run_longbench_limit_batches_and_overrides(tok, data_dir):
    llm = FakeLLM(tok, ["Paris", "Paris"])
    res = lb.run_longbench(
        llm, data_dir, "hotpotqa", limit=1, kv_policy="snapkv", kv_budget=64
    )
    assert res["runs"]["snapkv"]["scores"] == {"hotpotqa": 100.0}
    assert res["config"]["limit"] == 1
    # Every sampling setting is recorded, the defaults too; full runs first.
    c = res["config"]
    assert (c["policies"], c["block_length"], c["temperature"], c["seed"]) == (
        ["full", "snapkv"],
        8,
        0.0,
        0,
    )
    with pytest.raises(TypeError, match="frequency_penalty"):
        lb.run_longbench(llm, data_dir, "hotpotqa", frequency_penalty=0.9)
    with pytest.raises(ValueError, match="steps follows from the task"):
        lb.run_longbench(llm, data_dir, "hotpotqa", steps=16)
    with pytest.raises(ValueError, match="kv_policy='snapkv' needs a kv_budget"):
        lb.run_longbench(llm, data_dir, "hotpotqa", policies=["snapkv"])
    (_, full), (_, snap) = llm.calls
    assert (full.kv_policy, full.kv_budget) == ("full", None)
    assert (snap.kv_policy, snap.kv_budget) == ("snapkv", 64)
    llm = FakeLLM(tok, ["x", "y"])
    lb.run_longbench(llm, data_dir, ["hotpotqa"], batch_size=1)
    assert [len(p) for p, _ in llm.calls] == [1, 1]


def test_missing_file_and_unknown_task_fail_before_generating(tok, data_dir):
    llm = FakeLLM(tok, [])
    with pytest.raises(ValueError, match=r"'qasper': no data file .*qasper\.jsonl"):
        lb.run_longbench(llm, data_dir, ["hotpotqa", "qasper"])
    with pytest.raises(ValueError, match="unknown LongBench task 'hotpot'"):
        lb.run_longbench(llm, data_dir, ["hotpot"])
    assert llm.calls == []
    (data_dir / "trec.jsonl").write_text('{"context": "c"}\n')
    with pytest.raises(ValueError, match="lacks input, answers"):
        lb.load_task(data_dir, "trec")


def test_main_runs_and_reports_errors(tok, data_dir, tmp_path, monkeypatch, capsys):
    seen = {}

    def fake_build(args):
        seen["args"] = args
        # full: both right; maskkv: the second row wrong.
        texts = ["Location", "Number", "Location", "Location"]
        return FakeLLM(tok, texts, kv_policy=args.kv_policy, kv_budget=args.kv_budget)

    monkeypatch.setattr(lb, "build_llm", fake_build)
    out = tmp_path / "r.json"
    argv = ["--model", "/ckpt", "--data-dir", str(data_dir), "--tasks", "trec"]
    engine = ["--kv-policy", "maskkv", "--kv-budget", "8"]
    assert lb.main([*argv, "--out", str(out), *engine]) == 0
    # The engine runs maskkv by default; the runner adds the full-cache run.
    res = json.loads(out.read_text())
    assert res["runs"]["full"]["scores"] == {"trec": 100.0}
    assert res["runs"]["maskkv"]["scores"] == {"trec": 50.0}
    assert res["retention"] == {"maskkv": {"scores": {"trec": 50.0}, "average": 50.0}}
    args = seen["args"]
    assert (args.max_prompt_tokens, args.kv_policy, args.rope_scaling) == (
        None,
        "maskkv",
        1.0,
    )
    assert "average" in capsys.readouterr().out
    assert lb.main([*argv[:4], "--tasks", "nope"]) == 2
    assert "unknown LongBench task 'nope'" in capsys.readouterr().err
    assert lb.main([*argv[:4], "--tasks", "qasper"]) == 2
    assert "no data file" in capsys.readouterr().err
    defaults = lb.argparse.ArgumentParser()
    lb.add_arguments(defaults)
    ns = defaults.parse_args(["--model", "m", "--data-dir", "d"])
    assert len(ns.tasks) == 14 and ns.out == "results.json" and ns.block_length == 8


def test_longbench_takes_the_engine_s_own_flags(tiny_dir):
    # Declared by EngineArgs (once): --page-size and the MaskKV knobs were missing,
    # --device/--dtype were declared a second time by the runner.
    p = lb.argparse.ArgumentParser()
    lb.add_arguments(p)
    ns = p.parse_args(
        ["--model", str(tiny_dir), "--data-dir", "d", "--kv-policy", "maskkv",
         "--kv-budget", "8", "--page-size", "32", "--kv-cache-memory", "8MiB",
         "--maskkv-alpha", "0.2", "--device", "cpu"]
    )  # fmt: skip
    flags = [s for a in p._actions for s in a.option_strings]
    assert len(flags) == len(set(flags))
    config = lb.build_llm(ns).engine.config
    assert (config.kv_policy, config.kv_budget, config.max_num_seqs) == ("maskkv", 8, 4)
    assert config.cache.page_size == 32 and config.maskkv.alpha == 0.2


# ------------------------------------------------ prompt length from the checkpoint


@pytest.fixture(scope="module")
def short_dir(tmp_path_factory):
    """A tiny LLaDA trained (by its config) at 256 tokens."""
    path = tmp_path_factory.mktemp("short")
    return write_tiny_checkpoint(path, seed=0, max_sequence_length=256)


@pytest.fixture
def long_dir(tmp_path):
    """hotpotqa rows of about 600 byte tokens: longer than the model's 256."""
    d = tmp_path / "long"
    d.mkdir()
    context = "The capital of France is Paris. " * 18
    write_jsonl(
        d / "hotpotqa.jsonl",
        [row(i, context, "Capital of France?", ["Paris"]) for i in range(2)],
    )
    return d


def test_default_prompt_length_comes_from_the_checkpoint(short_dir, long_dir):
    # 256 tokens: hotpotqa's canvas is 32 and its chat template 23 byte tokens, so
    # the text keeps 256 - 32 - 23 = 201 tokens (100 + 100: an odd budget keeps
    # one less), 223 with the template. A fixed 7500 sent the 889-token prompt
    # whole and the engine refused it: the run stopped at the first prompt.
    llm = LLM(str(short_dir), device="cpu", dtype="float32", kv_cache_memory="8MiB")
    res = lb.run_longbench(
        llm, long_dir, ["hotpotqa"], policies=["maskkv"], kv_budget=8
    )
    assert res["config"]["max_prompt_tokens"] is None
    assert res["tasks"]["hotpotqa"]["max_prompt_tokens"] == 201
    assert res["context"] == {
        "max_sequence_length": 256,
        "rope_scaling": 1.0,
        "checkpoint_limit": 256,
        "max_model_len": 256,
    }
    for policy in ("full", "maskkv"):
        samples = res["runs"][policy]["tasks"]["hotpotqa"]["samples"]
        assert [s["prompt_tokens"] for s in samples] == [223, 223]
        assert "error" not in samples[0]


def test_explicit_max_prompt_tokens_above_the_limit_fails_first(tok, data_dir):
    llm = FakeLLM(tok, ["Paris", "cat"], max_model_len=256)
    with pytest.raises(
        ValueError,
        match=r"max_prompt_tokens=202 does not fit hotpotqa: .* max_model_len=256 "
        r"\(max_sequence_length 4096 x rope_scaling 1.0\); use at most 201",
    ):
        lb.run_longbench(llm, data_dir, ["hotpotqa"], 202)
    assert llm.calls == []
    # trec has a 64-token canvas and only a BOS around its text: 256 - 64 - 1.
    with pytest.raises(ValueError, match="max_prompt_tokens=201 does not fit trec"):
        lb.run_longbench(llm, data_dir, ["hotpotqa", "trec"], 201)
    res = lb.run_longbench(llm, data_dir, ["hotpotqa"], 201)
    assert res["tasks"]["hotpotqa"]["max_prompt_tokens"] == 201


def test_rope_scaling_scales_the_default(short_dir, caplog):
    p = lb.argparse.ArgumentParser()
    lb.add_arguments(p)
    argv = ["--model", str(short_dir), "--data-dir", "d", "--device", "cpu"]
    argv += ["--kv-cache-memory", "8MiB"]
    # The CLI asks the engine for 256 x 2 = 512 tokens.
    scaled = lb.build_llm(p.parse_args([*argv, "--rope-scaling", "2"]))
    assert engine_facts(scaled).max_model_len == 512
    sp = lb.task_sampling_params(task_config("hotpotqa"))
    plan = lb.plan_task(
        scaled.tokenizer, "hotpotqa", sp, engine_facts(scaled), None, ["full"]
    )
    assert (plan.max_prompt_tokens, plan.room) == (512 - 32 - 23, 512 - 32)
    # An LLM built with rope_scaling alone accepts the scaled length too.
    llm = LLM(str(short_dir), device="cpu", rope_scaling=2.0, kv_cache_memory="8MiB")
    assert engine_facts(llm).max_model_len == 512
    # A smaller max_model_len given by hand is said in a warning.
    llm = LLM(
        str(short_dir), device="cpu", rope_scaling=2.0, max_model_len=300,
        kv_cache_memory="8MiB",
    )  # fmt: skip
    facts = engine_facts(llm)
    assert (facts.max_model_len, facts.checkpoint_limit) == (300, 512)
    with caplog.at_level("WARNING"):
        warn_if_unscaled(facts)
    assert "pass max_model_len=512" in caplog.text


def test_fit_prompt_cuts_what_re_tokenizing_adds(tok):
    # "é" is 2 byte tokens. A budget of 6 keeps 3 + 3 bytes, each half ending or
    # starting inside a character, decoded as U+FFFD (3 bytes): BOS + 10 tokens.
    assert len(lb.encode_prompt(tok, "trec", "é" * 10, 6)) == 11
    # In 7 tokens the budget drops by the 4 too many: 1 + 1 bytes, two U+FFFD.
    assert lb.fit_prompt(tok, "trec", "é" * 10, 6, 7) == tok.encode("\ufffd\ufffd")
    with pytest.raises(ValueError, match="trec: no prompt fits in 3 tokens"):
        lb.fit_prompt(tok, "trec", "é" * 10, 6, 3)


# --------------------------------------------- retention and refresh settings


def test_retention_against_the_run_s_own_full_cache(tok, data_dir, monkeypatch):
    # A prediction's score is the number it reads.
    monkeypatch.setattr(lb, "score_prediction", lambda task, pred, *_: float(pred))
    texts = [
        *("1", "0.8"),  # hotpotqa, full: 90
        *("0.9", "0"),  # maskkv: 45
        *("0.8", "0.8"),  # snapkv: 80
        *("1", "1"),  # trec, full: 100
        *("1", "0.5"),  # maskkv: 75
        *("0", "0"),  # snapkv: 0
    ]
    llm = FakeLLM(tok, texts)
    res = lb.run_longbench(
        llm, data_dir, ["hotpotqa", "trec"], policies=["maskkv", "snapkv"], kv_budget=16
    )
    assert res["config"]["policies"] == ["full", "maskkv", "snapkv"]
    runs = res["runs"]
    assert [runs[p]["average"] for p in runs] == [95.0, 60.0, 40.0]
    # 45 / 90, 75 / 100, 60 / 95; 80 / 90, 0 / 100, 40 / 95.
    assert res["retention"] == {
        "maskkv": {"scores": {"hotpotqa": 50.0, "trec": 75.0}, "average": 63.16},
        "snapkv": {"scores": {"hotpotqa": 88.89, "trec": 0.0}, "average": 42.11},
    }
    # Same prompts and settings; only the policy (and full's budget) differ.
    (p0, full), (p1, mask), (p2, snap) = llm.calls[:3]
    assert p0 == p1 == p2
    assert full == dataclasses.replace(mask, kv_policy="full", kv_budget=None)
    assert snap == dataclasses.replace(mask, kv_policy="snapkv")


def test_refresh_settings_recorded_beside_the_paper_s(tok, data_dir):
    llm = FakeLLM(tok, ["Paris", "x", "Location", "Number"])
    res = lb.run_longbench(llm, data_dir, ["hotpotqa", "trec"], block_length=32)
    refresh = res["refresh"]
    assert refresh["this_run"] == {
        "base_cache": "maskkv_vllm prompt KV cache (no dLLM-Cache)",
        "canvas_cache": "none",
        "canvas_refresh": "whole canvas recomputed every step",
        "prompt_refresh_interval": None,
        "block_length": 32,
        "tasks": {
            "hotpotqa": {"gen_length": 32, "steps": 32},
            "trec": {"gen_length": 64, "steps": 64},
        },
    }
    paper = refresh["paper"]
    assert paper["base_cache"] == "dLLM-Cache" and paper["block_length"] == 8
    assert (
        paper["prompt_refresh_interval_Tp"],
        paper["answer_refresh_interval_Tr"],
        paper["adaptive_refresh_ratio_rho"],
    ) == (50, 5, 0.25)
    assert lb.format_table(res).splitlines()[-2:] == [
        "this run: canvas_cache=none (whole canvas recomputed every step), "
        "prompt KV refreshed never, block 32",
        "paper: dLLM-Cache Tp=50, Tr=5, rho=0.25, block 8 (our engine has no "
        "dLLM-Cache)",
    ]
