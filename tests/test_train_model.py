"""The training script's pure pieces: stage gate, prior, batches, and a smoke run."""

from __future__ import annotations

import importlib.util
import json
import random
import re
import sys
from pathlib import Path

import pytest
import torch

from maskkv_vllm.evaluation.synthetic import Sample, facts, word_tokenizer
from maskkv_vllm.models.loader import load_checkpoint
from maskkv_vllm.models.rope import rope_cos_sin, rope_inv_freq

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "train_model.py"
spec = importlib.util.spec_from_file_location("train_model", SCRIPT)
tm = importlib.util.module_from_spec(spec)
sys.modules["train_model"] = tm  # its dataclasses resolve their module by name
spec.loader.exec_module(tm)

# 1 layer, 2 heads of 16: builds and trains in milliseconds.
MICRO = ["--layers", "1", "--heads", "2", "--head-dim", "16", "--mlp", "32"]


def micro_model(tok, prior: bool):
    args = tm.parse_args(["--out", "unused", *MICRO, "--no-prior"])
    model, _ = tm.build(args, tok, seed=0)
    if prior:
        tm.add_local_prior(model, torch.Generator().manual_seed(0), (1, 2))
    return model


@pytest.mark.parametrize(
    ("length", "accuracy", "want"),
    [
        (32, 0.5, 32),  # below the threshold: stay
        (32, 0.9, 64),  # passed: double
        (1024, 0.95, 2048),
        (2048, 1.0, 2048),  # the last stage never grows
        (1536, 0.9, 2048),  # doubling is capped at the final length
    ],
)
def test_gate_doubles_only_past_the_threshold(length, accuracy, want):
    assert tm.next_length(length, accuracy, threshold=0.9, final=2048) == want


def test_lr_warms_up_then_stays_constant():
    assert tm.lr_at(1, 1e-3, 100) == pytest.approx(1e-5)
    assert tm.lr_at(100, 1e-3, 100) == tm.lr_at(5000, 1e-3, 100) == 1e-3


def test_prior_keeps_shapes_and_touches_only_block0_qk_and_embeddings(tok):
    plain, primed = micro_model(tok, False), micro_model(tok, True)
    a, b = plain.state_dict(), primed.state_dict()
    assert a.keys() == b.keys()
    changed = {k for k in a if not torch.equal(a[k], b[k])}
    assert changed == {
        "model.transformer.wte.weight",
        "model.transformer.blocks.0.q_proj.weight",
        "model.transformer.blocks.0.k_proj.weight",
    }
    assert all(a[k].shape == b[k].shape for k in a)


@pytest.mark.parametrize("offset", [0, 2])
def test_prior_makes_block0_attend_to_neighbours(tok, offset):
    model = micro_model(tok, False)
    tm.add_local_prior(model, torch.Generator().manual_seed(0), (1, 2), 8, (offset,))
    ids = torch.tensor([tok.encode("k001 : 1 2 3 ; k002 : 4 5 6 ; ? k001").ids * 3])
    positions = torch.arange(ids.shape[1])[None]
    cos, sin = rope_cos_sin(positions, rope_inv_freq(16, 1e4, ids.device))
    q, k, _ = model.blocks[0].qkv(model.model.transformer.wte(ids), cos, sin)
    attn = (q @ k.transpose(-1, -2) / 4).softmax(-1)[0]  # (H, T, T)
    back = positions[0, :, None] - positions[0, None, :]  # (T, T): m - n
    near = (attn * ((back - offset).abs() <= 2)).sum(-1)  # per head and query
    # uniform attention would give at most 5/36 to the 5 neighbours
    assert near[:, 8:].min() > 0.4 and near[:, 8:].mean() > 0.8, near[:, 8:]


def test_batch_masks_only_answer_and_recall_slots(tok):
    args = tm.parse_args(["--out", "unused", *MICRO])
    config = tm.make_config(args, tok)
    noisy, positions, key_mask, target, masked, weight = tm.make_batch(
        random.Random(0), tok, config, ["kv", "kv", "vt"], 64, recall=4
    )
    assert noisy.shape == target.shape == masked.shape == weight.shape
    width = noisy.shape[1] - tm.GEN_LENGTH
    assert masked[:, width:].any(dim=1).all()  # every row trains its answer
    prompt_targets = target[:, :width][masked[:, :width]]
    digits = {tok.token_to_id(str(d)) for d in range(10)}
    assert set(prompt_targets.tolist()) <= digits  # recall slots are digits only
    assert (noisy[masked] == config.mask_token_id).all()
    assert (weight[:, :width][masked[:, :width]] == 1).all()  # recall: weight 1
    assert (weight[:, width:] >= 1).all()  # canvas: 1/t with t <= 1
    assert (positions[key_mask.logical_not()] == 0).all()  # left padding


def test_pretraining_rows_mask_the_whole_sequence_per_token(tok):
    # Issue 26, item 2: LLaDA's pretraining objective on a share of the rows.
    args = tm.parse_args(["--out", "unused", *MICRO])
    config = tm.make_config(args, tok)
    gen = torch.Generator().manual_seed(3)
    tasks = ["kv"] * 8
    noisy, _, key_mask, target, masked, weight = tm.make_batch(
        random.Random(0), tok, config, tasks, 64, 0, gen=gen, pretrain=1.0
    )
    width = noisy.shape[1] - tm.GEN_LENGTH
    assert masked[:, :width].any()  # prompt tokens are masked too
    assert not (masked & ~key_mask).any()  # never the padding
    assert (noisy[masked] == config.mask_token_id).all()
    assert (noisy[~masked] == target[~masked]).all()
    for row in range(len(tasks)):
        # One ratio per row: weight = L / (p x real length), the same on every token.
        w = weight[row][masked[row]]
        assert (w == w[0]).all()
        p = tm.GEN_LENGTH / (w[0] * key_mask[row].sum())
        assert tm.PRETRAIN_EPS <= p <= 1
    # Off (the default), the stream and the batch are the SFT ones, bit for bit.
    plain = tm.make_batch(random.Random(0), tok, config, tasks, 64, 0,
                          gen=torch.Generator().manual_seed(3))  # fmt: skip
    off = tm.make_batch(random.Random(0), tok, config, tasks, 64, 0,
                        gen=torch.Generator().manual_seed(3), pretrain=0.0)  # fmt: skip
    assert all(torch.equal(a, b) for a, b in zip(plain, off, strict=True))
    assert not plain[4][:, :width].any()  # no recall queries: the prompt is visible


def test_recall_queries_cover_the_final_key_and_keep_the_query_last():
    prompt = "k001 : 1 2 3 ; k002 : 4 5 6 ? k001"
    rng = random.Random(0)
    asked = set()
    for _ in range(20):
        words, slots = tm.recall_queries(rng, prompt, 3)
        assert words[-2:] == ["?", "k001"]
        assert len(slots) == 9  # 3 queries x 3 digits, drawn with replacement
        for j in range(0, 9, 3):
            name, values = words[slots[j] - 1], [words[i] for i in slots[j : j + 3]]
            assert values == {"k001": ["1", "2", "3"], "k002": ["4", "5", "6"]}[name]
            asked.add(name)
    assert asked == {"k001", "k002"}  # no record is left out: no elimination


def test_colon_recall_queries_are_laid_out_like_records():
    prompt = "k001 : 1 2 3 ; k002 : 4 5 6 ? k001"
    words, slots = tm.recall_queries(random.Random(0), prompt, 4, colon=1.0)
    assert words[-2:] == ["?", "k001"]
    for j in range(0, len(slots), 3):
        # "? name : d d d ;": the name sits 2 words before the first value, as in
        # a record.
        assert words[slots[j] - 3] == "?" and words[slots[j] - 1] == ":"
        assert words[slots[j] + 3] == ";"


def test_smoke_run_writes_a_loadable_checkpoint_and_history(tmp_path):
    out = tmp_path / "ck"
    argv = ["--out", str(out), *MICRO, "--batch", "2", "--seeds", "0", "1",
            "--probe-steps", "2", "--eval-every", "2", "--steps", "6",
            "--start-length", "32", "--final-length", "64", "--threshold", "0",
            "--eval-samples", "2", "--final-samples", "2", "--report-lengths", "64",
            "--prior-pairs", "1", "2"]  # fmt: skip
    run = tm.main(argv)
    assert run.step == 6 and run.length == 64
    meta = json.loads((out / "training.json").read_text())
    assert meta["stopped"] == "steps"
    assert [h["length"] for h in meta["history"]][-1] == 64
    assert {"exact", "digit"} <= meta["history"][-1]["kv"].keys()
    assert meta["final"]["kv"].keys() == {"32", "64"}
    # Seed 0 already passes threshold 0, so the probe never tries seed 1.
    assert [p["seed"] for p in meta["probes"]] == [0]
    model, tokenizer = load_checkpoint(out)
    assert model.config.n_layers == 1 and model.config.rope_theta == 1e4
    assert tokenizer.encode("? k001") == word_tokenizer().encode("? k001").ids


def test_prior_heads_stay_frozen_by_default_and_evals_leave_the_stream_alone(tok):
    args = tm.parse_args(["--out", "unused", *MICRO, "--batch", "2"])
    run = tm.Run(args, tok, seed=0)
    q0 = run.model.blocks[0].q_proj.weight.detach().clone()
    run.train_step()
    tm.evaluate(run.model, tok, run.config, "kv", 32, 2)
    torch.rand(5)  # the global stream moves; the run's must not
    batch = tm.make_batch(random.Random(1), tok, run.config, ["kv"], 32, 2, 0.0,
                          torch.Generator().manual_seed(5))  # fmt: skip
    again = tm.make_batch(random.Random(1), tok, run.config, ["kv"], 32, 2, 0.0,
                          torch.Generator().manual_seed(5))  # fmt: skip
    assert all(torch.equal(a, b) for a, b in zip(batch, again, strict=True))
    assert torch.equal(run.model.blocks[0].q_proj.weight, q0)  # prior kept


def test_the_gate_is_the_samplers_answer_up_to_its_eos(tok, monkeypatch):
    # The stage gate read one argmax over the whole all-masked canvas, EOS
    # padding included: a model with every digit right (per-digit 0.97) scored
    # 0.08-0.88 there, from a stray fourth slot that the sampler never commits
    # past its first EOS. It reads the sampler's answer now, as `maskkv eval` does.
    model = micro_model(tok, prior=False)
    rng = random.Random(tm.EVAL_SEED + 32 + tm.TASK_SEED["kv"])
    eos = model.config.eos_token_id
    digits = [
        [t for t in tm.prompt_targets(rng, tok, "kv", 32, 0)[1] if t != eos]
        for _ in range(4)
    ]
    given = [digits[0], digits[1], digits[2] + digits[2][-1:], []]
    monkeypatch.setattr(tm, "sampled_answers", lambda model, prompts, n: given)
    scores = tm.evaluate(model, tok, model.config, "kv", 32, 4)
    assert scores["answer"] == 0.5


def test_sampled_answers_are_what_the_engine_answers():
    from maskkv_vllm.engine.llm import LLM

    llm = LLM("retrieval", dtype="float32", kv_cache_memory="64MiB")
    rng = random.Random(5)
    prompts = [
        tm.prompt_targets(rng, word_tokenizer(), "kv", 64, 0)[0] for _ in range(4)
    ]
    params = tm.SamplingParams(gen_length=8, block_length=8, steps=8)
    want = [out.token_ids for out in llm.generate(prompts, params)]
    assert tm.sampled_answers(llm.engine.model, prompts) == want


def test_gate_takes_the_worst_gated_task_that_ran():
    entry = {"kv": {"answer": 0.95}, "vt": {"answer": 0.40}}
    assert tm.gate_accuracy(entry, ["kv"]) == 0.95
    assert tm.gate_accuracy(entry, ["kv", "vt"]) == 0.40
    # needle did not run at this check: it cannot hold the gate
    assert tm.gate_accuracy(entry, ["kv", "needle"]) == 0.95


def test_a_curriculum_can_gate_on_its_own_vt_chains():
    args = tm.parse_args(["--out", "unused", "--gate-tasks", "kv", "vt_trained",
                          "--vt-fraction", "0.5", "--vt-hops", "1"])  # fmt: skip
    entry = {"kv": {"answer": 0.95}, "vt": {"answer": 0.1},
             "vt_trained": {"answer": 0.85}}  # fmt: skip
    assert tm.gate_accuracy(entry, args.gate_tasks) == 0.85


@pytest.mark.parametrize("extra", [[], ["--vt-hops", "1"], ["--vt-fraction", "0.5"]])
def test_gating_on_vt_trained_without_a_curriculum_is_named(extra, capsys):
    with pytest.raises(SystemExit):
        tm.parse_args(["--out", "unused", "--gate-tasks", "vt_trained", *extra])
    assert "--gate-tasks vt_trained needs a vt curriculum" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("u", "want"),
    [(0.05, "vt"), (0.15, "needle"), (0.25, "multi"), (0.35, "kv")],
)
def test_pick_task_order_vt_needle_multi_then_kv(u, want):
    assert tm.pick_task(u, vt=0.1, needle=0.1, multi=0.1) == want


def test_recall_queries_go_before_a_multi_question_whole():
    prompt = "k001 : 1 2 3 ; k002 : 4 5 6 ; ? k002 ; k001"
    words, slots = tm.recall_queries(random.Random(0), prompt, 1)
    assert words[-4:] == ["?", "k002", ";", "k001"]
    assert words[:12] == prompt.split()[:12]
    inserted = words[12:-4]
    assert inserted[0] == "?" and inserted[-1] == ";" and len(inserted) == 6
    assert [words[j] for j in slots] == inserted[2:5]


def test_a_multi_row_asks_two_keys_and_fills_the_canvas(tok):
    prompt, answer, _ = tm.prompt_targets(random.Random(3), tok, "multi", 64, 0)
    words = tok.decode(prompt).split()
    assert words[-4] == "?" and words[-2] == ";"
    eos = tok.token_to_id("<|endoftext|>")
    assert len(answer) == tm.GEN_LENGTH and answer[-1] == eos
    assert tok.decode(answer[:7]).split()[3] == ";"  # d d d ; d d d


def test_a_multi_run_checks_and_scores_multi(tmp_path):
    out = tmp_path / "ck"
    argv = ["--out", str(out), *MICRO, "--batch", "2", "--seeds", "0",
            "--eval-every", "2", "--steps", "2", "--multi-fraction", "0.5",
            "--start-length", "32", "--final-length", "32", "--eval-samples", "2",
            "--final-samples", "2", "--report-lengths", "32", "--gate-tasks", "kv",
            "multi", "--prior-pairs", "1", "2"]  # fmt: skip
    tm.main(argv)
    meta = json.loads((out / "training.json").read_text())
    assert set(meta["history"][-1]) >= {"kv", "multi"}
    assert "needle" not in meta["history"][-1]
    assert set(meta["final"]) == {"kv", "vt", "needle", "multi"}


@pytest.mark.parametrize(
    ("length", "keys", "bad"),
    [(3, None, "length=3"), (16, (0, 2), "multi_keys=(0, 2)"),
     (16, (3, 2), "multi_keys=(3, 2)"), (16, (1, 5), "<= 4")],
)  # fmt: skip
def test_a_bad_canvas_is_refused_by_value(length, keys, bad):
    with pytest.raises(ValueError, match=re.escape(bad)):
        tm.Canvas(length, keys)


def test_three_multi_keys_are_refused():
    args = tm.parse_args(["--out", "unused", "--multi-keys", "1", "2", "3"])
    with pytest.raises(ValueError, match=re.escape("--multi-keys [1, 2, 3]")):
        tm.canvas_of(args)


def test_a_longer_canvas_pads_every_answer_and_multi_fills_it(tok):
    eos = tok.token_to_id("<|endoftext|>")
    canvas = tm.Canvas(16)  # 4 keys: 15 words and one EOS
    _, answer, _ = tm.prompt_targets(
        random.Random(3), tok, "multi", 96, 0, canvas=canvas
    )
    assert len(answer) == 16 and answer[-1] == eos and eos not in answer[:15]
    _, answer, _ = tm.prompt_targets(random.Random(3), tok, "kv", 96, 0, canvas=canvas)
    assert answer[3:] == [eos] * 13


def test_multi_keys_draw_from_the_range(tok):
    eos = tok.token_to_id("<|endoftext|>")
    canvas, rng = tm.Canvas(16, (1, 4)), random.Random(0)
    keys = set()
    for _ in range(40):
        prompt, answer, _ = tm.prompt_targets(rng, tok, "multi", 96, 0, canvas=canvas)
        words = [t for t in answer if t != eos]
        asked = (len(words) + 1) // 4
        question = tok.decode(prompt).split()
        assert (
            len(question) - 1 - question[::-1].index("?") == len(question) - 2 * asked
        )
        assert len(answer) == 16
        keys.add(asked)
    assert keys == {1, 2, 3, 4}
    # One N draws nothing: the stream is the fixed-count one.
    a, b = random.Random(7), random.Random(7)
    tm.prompt_targets(a, tok, "multi", 96, 0, canvas=tm.Canvas(16, (2, 2)))
    tm.prompt_targets(b, tok, "multi", 96, 0, canvas=tm.Canvas(8))
    assert a.random() == b.random()


def test_a_longer_canvas_batches_blinds_and_scores_its_own_slots(tok):
    model = micro_model(tok, prior=False)
    canvas = tm.Canvas(16)
    batch = tm.make_batch(random.Random(0), tok, model.config, ["kv", "multi"], 48,
                          2, 0.0, torch.Generator().manual_seed(0), 0.0,
                          canvas=canvas)  # fmt: skip
    noisy, _, key_mask, _, masked, _ = batch
    width = noisy.shape[1] - 16
    assert key_mask[:, width:].all() and masked[:, width:].any(dim=1).all()
    blind = torch.tensor([True, False])
    attn = tm.BlindAttention(key_mask, blind, 16)
    assert not attn.mask[0, 0, width - 1, width:].any()  # prompt sees no canvas
    assert attn.mask[0, 0, width, width:].all()  # the canvas sees itself
    assert attn.mask[1, 0, width - 1, width:].all()
    assert torch.isfinite(tm.loss_fn(model, *batch, blind, 16))
    loss, half = (tm.loss_fn(model, *batch, None, n) for n in (16, 32))
    assert half.item() == pytest.approx(loss.item() / 2)  # per canvas slot
    pred = tm.predict_answers(model, model.config, [[1, 5, 6]], 16)
    assert pred.shape == (1, 16)


def test_a_long_canvas_run_checks_multi_on_its_canvas(tmp_path):
    out = tmp_path / "ck"
    argv = ["--out", str(out), *MICRO, "--batch", "2", "--seeds", "0",
            "--eval-every", "2", "--steps", "2", "--multi-fraction", "0.5",
            "--gen-length", "16", "--multi-keys", "1", "4",
            "--start-length", "48", "--final-length", "48", "--eval-samples", "2",
            "--final-samples", "2", "--report-lengths", "48", "--gate-tasks", "kv",
            "multi", "--prior-pairs", "1", "2"]  # fmt: skip
    tm.main(argv)
    meta = json.loads((out / "training.json").read_text())
    assert meta["args"]["gen_length"] == 16 and meta["args"]["multi_keys"] == [1, 4]
    assert {"kv", "multi"} <= meta["history"][-1].keys()


@pytest.mark.parametrize(
    ("extra", "checked"),
    [
        (["--vt-chains", "3"], {"kv", "vt", "vt_trained"}),
        (["--vt-direct", "0.5"], {"kv", "vt", "vt_trained", "vt_direct"}),
        (
            ["--vt-direct", "0.5", "--vt-direct-form", "prefix"],
            {"kv", "vt", "vt_trained", "vt_direct"},
        ),  # fmt: skip
    ],
)
def test_a_hop_curriculum_checks_its_own_chains_beside_the_task_s(
    tmp_path, extra, checked
):
    out = tmp_path / "ck"
    argv = ["--out", str(out), *MICRO, "--batch", "2", "--seeds", "0",
            "--eval-every", "2", "--steps", "2", "--vt-fraction", "0.5",
            "--vt-from", "32", "--vt-hops", "1", *extra,
            "--start-length", "48",
            "--final-length", "48", "--eval-samples", "2", "--final-samples", "2",
            "--report-lengths", "48", "--prior-pairs", "1", "2"]  # fmt: skip
    tm.main(argv)
    entry = json.loads((out / "training.json").read_text())["history"][-1]
    assert checked <= entry.keys()
    assert ("vt_direct" in entry) == ("vt_direct" in checked)


def test_a_direct_question_asks_one_statement_s_own_right_hand_side():
    s = Sample("vt", "k001 : 1 2 3 ; x05 = 7 ; x09 = x05 ; x02 = 4 ; ? x09", "7")
    seen = {tm.direct_question(random.Random(seed), s) for seed in range(40)}
    assert seen == {
        Sample("vt", "k001 : 1 2 3 ; x05 = 7 ; x09 = x05 ; x02 = 4 ; ? x05 =", "7"),
        Sample("vt", "k001 : 1 2 3 ; x05 = 7 ; x09 = x05 ; x02 = 4 ; ? x09 =", "x05"),
        Sample("vt", "k001 : 1 2 3 ; x05 = 7 ; x09 = x05 ; x02 = 4 ; ? x02 =", "4"),
    }


def test_direct_share_turns_vt_rows_only_and_leaves_other_streams_alone(tok):
    def rows(task, vt):
        rng = random.Random(3)
        return [tm.prompt_targets(rng, tok, task, 48, 2, 0.0, vt) for _ in range(6)]

    eq = tok.token_to_id("=")
    suffix = rows("vt", tm.VtPrompts((1,), 2, 1.0))
    assert all(p[-1] == eq for p, _, _ in suffix)
    prefix = rows("vt", tm.VtPrompts((1,), 2, 1.0, "prefix"))
    assert all(p[-2] == eq and p[-3] == tok.token_to_id("?") for p, _, _ in prefix)
    # the recall queries never ask "?" (what "? = xB" would state to ``facts``)
    assert all(tok.decode(p).count("? ?") == 0 for p, _, _ in prefix)
    assert all(p[-1] != eq for p, _, _ in rows("vt", tm.VtPrompts((1,), 2, 0.0)))
    assert rows("kv", tm.VtPrompts((1,), 2, 1.0)) == rows("kv", tm.VtPrompts((1,), 2))


def test_vt_prompts_refuse_an_unknown_direct_form():
    with pytest.raises(ValueError, match="direct_form='middle' is not one of"):
        tm.VtPrompts(direct_form="middle")


def test_a_prefix_direct_question_ends_on_the_name():
    s = Sample("vt", "x05 = 7 ; x09 = x05 ; ? x09", "7")
    got = tm.direct_question(random.Random(1), s, "prefix")
    assert got.prompt.startswith("x05 = 7 ; x09 = x05 ; ? = ")
    assert (got.prompt.split()[-1], got.answer) in {("x05", "7"), ("x09", "x05")}


def test_var_keyed_kv_renames_keys_to_distinct_variables_and_keeps_the_answer():
    s = tm.var_keyed(random.Random(0), tm.make_sample(random.Random(1), "kv", 96))
    words = s.prompt.split()
    keys = [w for i, w in enumerate(words[:-2]) if words[i + 1] == ":"]
    assert all(k.startswith("x") for k in keys) and len(set(keys)) == len(keys)
    assert " ".join(facts(words)[words[-1]]) == s.answer and words[-1] in keys


def test_var_keyed_kv_renames_as_many_records_as_there_are_names():
    s = tm.var_keyed(random.Random(0), tm.make_sample(random.Random(1), "kv", 600))
    words = s.prompt.split()
    keys = [w for i, w in enumerate(words[:-2]) if words[i + 1] == ":"]
    assert sum(k.startswith("x") for k in keys) == 64 and words[-1].startswith("x")
    assert " ".join(facts(words)[words[-1]]) == s.answer


def test_a_bad_var_key_share_is_named():
    with pytest.raises(ValueError, match=r"var_keys=1.5 must be within \[0, 1\]"):
        tm.KvPrompts(1.5)


def micro_run(out: Path, *extra: str, length: int = 48):
    """Two steps of a micro model at ``length`` tokens into ``out``, with ``extra``
    flags; one check."""
    n = str(length)
    argv = ["--out", str(out), *MICRO, "--batch", "2", "--seeds", "0",
            "--eval-every", "2", "--steps", "2", *extra,
            "--start-length", n, "--final-length", n, "--eval-samples", "2",
            "--final-samples", "2", "--report-lengths", n,
            "--prior-pairs", "1", "2"]  # fmt: skip
    return tm.main(argv)


def test_a_var_keyed_run_checks_the_lookup_by_variable_name(tmp_path):
    out = tmp_path / "ck"
    micro_run(out, "--kv-var-keys", "0.5")
    entry = json.loads((out / "training.json").read_text())["history"][-1]
    assert {"kv", "kv_var"} <= entry.keys()


def test_direct_recall_asks_a_variable_s_own_right_hand_side():
    prompt = "x01 = 7 ; k002 : 4 5 6 ; x02 = x01 ; ? x02"
    words, slots = tm.recall_queries(random.Random(0), prompt, 4, direct=1.0)
    assert " ".join(words[14:]) == (
        "? x02 = x01 ; ? x02 = x01 ; ? x01 = 7 ; ? k002 4 5 6 ; ? x02"
    )  # a record's key is asked as before
    assert [words[j] for j in slots] == ["x01", "x01", "7", "4", "5", "6"]
    # "prefix": the name last, so its own output predicts the right-hand side.
    words, slots = tm.recall_queries(random.Random(0), prompt, 4, 0.0, 1.0, "prefix")
    assert " ".join(words[14:]) == (
        "? = x02 x01 ; ? = x02 x01 ; ? = x01 7 ; ? k002 4 5 6 ; ? x02"
    )
    assert [words[j] for j in slots] == ["x01", "x01", "7", "4", "5", "6"]
    # Without it the same names are asked their resolved digits.
    words, slots = tm.recall_queries(random.Random(0), prompt, 4)
    assert " ".join(words[14:]) == "? x02 7 ; ? x02 7 ; ? x01 7 ; ? k002 4 5 6 ; ? x02"


def test_direct_recall_leaves_the_stream_of_runs_without_it():
    prompt = "x01 = 7 ; k002 : 4 5 6 ; x02 = x01 ; ? x02"
    a, b = random.Random(4), random.Random(4)
    assert tm.recall_queries(a, prompt, 5) == tm.recall_queries(b, prompt, 5, 0.0, 0.0)
    assert a.random() == b.random()


def test_a_bad_direct_share_is_named():
    with pytest.raises(ValueError, match=r"recall_direct=2.0 must be within \[0, 1\]"):
        tm.VtPrompts(recall_direct=2.0)


def test_a_final_check_that_is_not_the_best_writes_the_latest_weights(
    tmp_path, monkeypatch
):
    scores = iter([0.5, 0.2, 0.1])  # the first check stays the best
    monkeypatch.setattr(tm, "gate_accuracy", lambda entry, tasks: next(scores))
    out = tmp_path / "ck"
    argv = ["--out", str(out), *MICRO, "--batch", "2", "--seeds", "0",
            "--eval-every", "1", "--steps", "3", "--start-length", "32",
            "--final-length", "32", "--eval-samples", "2", "--final-samples", "2",
            "--report-lengths", "32", "--prior-pairs", "1", "2"]  # fmt: skip
    tm.main(argv)
    latest = json.loads((tmp_path / "ck-latest" / "training.json").read_text())
    assert latest["step"] == 3 and [h["step"] for h in latest["history"]] == [1, 2, 3]
    assert load_checkpoint(tmp_path / "ck-latest")[0].config.n_layers == 1
    best = json.loads((out / "training.json").read_text())
    # The run stopped at step 3; the weights kept, and scored, are step 1's.
    assert best["step"] == 3 and best["weights_step"] == 1
    assert latest["weights_step"] == 3


def test_pretraining_rows_only_of_the_listed_tasks_and_the_same_draws(tok):
    # --pretrain-tasks: needle rows keep the SFT mask, kv rows the same
    # pretraining mask as with every task allowed (the stream is not shifted).
    args = tm.parse_args(["--out", "unused", *MICRO])
    config = tm.make_config(args, tok)
    tasks = ["kv", "needle"] * 4

    def batch(allowed):
        return tm.make_batch(random.Random(0), tok, config, tasks, 64, 0,
                             gen=torch.Generator().manual_seed(3), pretrain=1.0,
                             pretrain_tasks=allowed)  # fmt: skip

    every, kv_only = batch(None), batch(frozenset({"kv"}))
    width = every[0].shape[1] - tm.GEN_LENGTH
    masked_every, masked_kv = every[4], kv_only[4]
    for row, task in enumerate(tasks):
        assert masked_every[row, :width].any()  # pretraining masks the prompt
        if task == "kv":
            assert torch.equal(masked_kv[row], masked_every[row])
            assert torch.equal(kv_only[5][row], every[5][row])
        else:
            assert not masked_kv[row, :width].any()  # SFT: the prompt stays visible
            assert masked_kv[row, width:].any()
    assert tm.parse_args(["--out", "x"]).pretrain_tasks is None
    assert tm.parse_args(["--out", "x", "--pretrain-tasks", "kv", "vt"]
                         ).pretrain_tasks == ["kv", "vt"]  # fmt: skip
    with pytest.raises(SystemExit):
        tm.parse_args(["--out", "x", "--pretrain-tasks", "needles"])


def test_recall_free_rows_have_the_held_out_prompt_layout(tok):
    # --recall-free: held-out prompts have no recall query; a share of training
    # rows too. Off, the batch is the default one bit for bit.
    args = tm.parse_args(["--out", "unused", *MICRO])
    config = tm.make_config(args, tok)
    tasks = ["needle"] * 8

    def batch(free):
        return tm.make_batch(random.Random(0), tok, config, tasks, 64, 4,
                             gen=torch.Generator().manual_seed(3),
                             recall_free=free)  # fmt: skip

    plain = tm.make_batch(random.Random(0), tok, config, tasks, 64, 4,
                          gen=torch.Generator().manual_seed(3))  # fmt: skip
    assert all(torch.equal(a, b) for a, b in zip(plain, batch(0.0), strict=True))
    ask = tok.token_to_id("?")
    noisy, _, _, target, masked, _ = batch(1.0)
    width = noisy.shape[1] - tm.GEN_LENGTH
    assert not masked[:, :width].any()  # no recall digit to mask
    assert ((target[:, :width] == ask).sum(dim=1) == 1).all()  # the final question
    noisy, _, _, target, masked, _ = batch(0.5)
    width = noisy.shape[1] - tm.GEN_LENGTH
    asks = (target[:, :width] == ask).sum(dim=1).tolist()
    assert set(asks) == {1, 5}  # 4 queries + the final question, or the final alone
    assert [n == 1 for n in asks] == (~masked[:, :width].any(dim=1)).tolist()
    for bad in ("-0.1", "1.5"):
        with pytest.raises(SystemExit):
            tm.parse_args(["--out", "x", "--recall-free", bad])
