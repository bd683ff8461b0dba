"""LongBench runner: truncation, prompts, sampling, and an end-to-end fake run."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

from maskkv_vllm.evaluation import longbench as lb
from maskkv_vllm.evaluation.longbench_config import LONGBENCH_TASKS, task_config
from maskkv_vllm.models.tiny import byte_tokenizer, tiny_config
from maskkv_vllm.models.tokenizer import Tokenizer


@pytest.fixture(scope="module")
def tok():
    """Byte-level tokenizer: one token per ASCII character, BOS = 256."""
    return Tokenizer(byte_tokenizer(), tiny_config())


class FakeLLM:
    """``generate`` answers each prompt with the next fixed text."""

    def __init__(self, tokenizer, texts):
        self.tokenizer = tokenizer
        self.texts = list(texts)
        self.calls = []

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
    res = lb.run_longbench(llm, data_dir, ["hotpotqa", "trec"], 7500, out=out)
    # hotpotqa: (1 + 0.8) / 2 = 90; trec: (1 + 0.5) / 2 = 75; average 82.5.
    assert res["scores"] == {"hotpotqa": 90.0, "trec": 75.0}
    assert res["average"] == 82.5
    assert json.loads(out.read_text()) == res
    hot = res["tasks"]["hotpotqa"]
    assert [s["score"] for s in hot["samples"]] == [1.0, pytest.approx(0.8)]
    assert hot["samples"][1]["_id"] == "id1" and hot["chat_template"] is True
    assert (hot["gen_length"], hot["steps"]) == (32, 32)
    (hp, hparams), (tp, tparams) = llm.calls
    assert (hparams.gen_length, hparams.block_length, hparams.steps) == (32, 8, 32)
    assert (tparams.gen_length, tparams.steps) == (64, 64)
    assert hparams.kv_policy is None  # the engine's default policy
    # hotpotqa is chat-wrapped, trec is plain BOS + text.
    first = lb.format_prompt(
        "hotpotqa", row(0, "Paris is in France.", "Capital of France?", ["Paris"])
    )
    assert hp[0] == tok.encode_chat([{"role": "user", "content": first}])
    assert tok.decode(tp[1]).endswith("Type: Number\nHow many?")
    assert tp[1][0] == tok.bos_token_id and tok.eot_token_id not in tp[1]


def test_run_longbench_limit_batches_and_overrides(tok, data_dir):
    llm = FakeLLM(tok, ["Paris"])
    res = lb.run_longbench(
        llm, data_dir, "hotpotqa", limit=1, kv_policy="snapkv", kv_budget=64
    )
    assert res["scores"] == {"hotpotqa": 100.0} and res["config"]["limit"] == 1
    # Every sampling setting is recorded, the defaults too.
    c = res["config"]
    assert (c["kv_policy"], c["block_length"], c["temperature"], c["seed"]) == (
        "snapkv",
        8,
        0.0,
        0,
    )
    with pytest.raises(TypeError, match="top_p"):
        lb.run_longbench(llm, data_dir, "hotpotqa", top_p=0.9)
    with pytest.raises(ValueError, match="steps follows from the task"):
        lb.run_longbench(llm, data_dir, "hotpotqa", steps=16)
    assert llm.calls[0][1].kv_policy == "snapkv" and llm.calls[0][1].kv_budget == 64
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
        return FakeLLM(tok, ["Location", "Number"])

    monkeypatch.setattr(lb, "build_llm", fake_build)
    out = tmp_path / "r.json"
    argv = ["--model", "/ckpt", "--data-dir", str(data_dir), "--tasks", "trec"]
    assert lb.main([*argv, "--out", str(out), "--kv-policy", "maskkv"]) == 0
    assert json.loads(out.read_text())["scores"] == {"trec": 100.0}
    args = seen["args"]
    assert (args.max_prompt_tokens, args.kv_policy, args.rope_scaling) == (
        7500,
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
