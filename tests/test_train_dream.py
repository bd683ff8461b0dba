"""train_model.py --arch dream: Dream's shifted logits in training, its checkpoint in
the engine (issue 26, item 2)."""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from maskkv_vllm.models.attention import DenseAttention
from maskkv_vllm.models.dream import DreamModel
from maskkv_vllm.models.llada import LLaDAModel
from maskkv_vllm.models.loader import load_checkpoint

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCH))  # the probe imports train_model beside it
import train_model as tm  # noqa: E402
import window_probe as wp  # noqa: E402

# 1 layer, 2 heads of 16: builds and trains in milliseconds.
MICRO = ["--layers", "1", "--heads", "2", "--head-dim", "16", "--mlp", "32"]


def micro(tok, arch: str, *extra: str):
    args = tm.parse_args(["--out", "unused", *MICRO, "--arch", arch, *extra])
    return tm.build(args, tok, seed=0)[0]


def kv_batch(tok, config, pretrain: float = 0.0):
    gen = torch.Generator().manual_seed(1)
    return tm.make_batch(random.Random(0), tok, config, ["kv"] * 3, 48, 2,
                         gen=gen, pretrain=pretrain)  # fmt: skip


def test_llada_weights_map_onto_the_same_dream_network(tok):
    llada = micro(tok, "llada")
    dream = micro(tok, "dream")
    dream.load_state_dict(tm.dream_state_from_llada(llada.state_dict(), dream))
    assert all(v.abs().sum() == 0 for k, v in dream.state_dict().items()
               if k.endswith(".bias"))  # fmt: skip
    ids, positions, key_mask, *_ = kv_batch(tok, llada.config)
    attn = DenseAttention(key_mask)
    with torch.no_grad():
        want = llada.logits(llada(ids, positions, attn))
        got = dream.logits(dream(ids, positions, attn))  # unshifted outputs
    torch.testing.assert_close(got, want)


def test_a_stray_llada_tensor_is_named(tok):
    dream = micro(tok, "dream")
    with pytest.raises(ValueError, match="model.transformer.extra.weight"):
        tm.dream_state_from_llada({"model.transformer.extra.weight": torch.ones(1)},
                                  dream)  # fmt: skip


@pytest.mark.parametrize("pretrain", [0.0, 1.0])
def test_dream_loss_reads_each_token_from_the_output_before_it(tok, pretrain):
    # Oracle: the library's own shift (DreamModel.token_logits, row t = output t-1).
    model = micro(tok, "dream")
    ids, positions, key_mask, target, masked, weight = kv_batch(
        tok, model.config, pretrain
    )
    got = tm.loss_fn(model, ids, positions, key_mask, target, masked, weight)
    logits = model.token_logits(ids, positions, DenseAttention(key_mask))
    scored = masked.clone()
    scored[:, 1:] &= key_mask[:, :-1]  # a first real token has no output before it
    scored[:, 0] = False
    ce = F.cross_entropy(logits[scored], target[scored], reduction="none")
    want = (ce * weight[scored]).sum() / (len(ids) * tm.GEN_LENGTH)
    torch.testing.assert_close(got, want)


def test_dream_answers_are_read_one_row_early(tok):
    model = micro(tok, "dream")
    rng = random.Random(3)
    prompts = [tm.prompt_targets(rng, tok, "kv", 32, 0)[0] for _ in range(2)]
    got = tm.predict_answers(model, model.config, prompts[:1])
    m = model.config.mask_token_id
    ids = torch.tensor([prompts[0] + [m] * tm.GEN_LENGTH])
    logits = model.token_logits(ids, torch.arange(ids.shape[1])[None])
    assert got.tolist() == logits[:, len(prompts[0]) :].argmax(-1).tolist()


def test_dream_prior_heads_stay_frozen_biases_included(tok):
    args = tm.parse_args(["--out", "unused", *MICRO, "--arch", "dream",
                          "--batch", "2", "--prior-pairs", "1", "2"])  # fmt: skip
    run = tm.Run(args, tok, seed=0)
    q, k = tm.qk_projections(run.model.blocks[0])
    before = [p.detach().clone() for p in (q.weight, q.bias, k.weight, k.bias)]
    run.train_step()
    after = (q.weight, q.bias, k.weight, k.bias)
    assert all(torch.equal(a, b) for a, b in zip(after, before, strict=True))
    assert run.model.blocks[0].self_attn.v_proj.bias.abs().sum() > 0  # the rest learn


def test_dream_run_from_a_llada_init_writes_a_dream_checkpoint_the_engine_serves(
    tmp_path, tok
):
    from maskkv_vllm.engine.llm import LLM

    init = tmp_path / "llada"
    args = tm.parse_args(["--out", str(init), *MICRO, "--prior-pairs", "1", "2"])
    model, _ = tm.build(args, tok, seed=0)
    tm.save(model, model.config, tok, init, {})
    out = tmp_path / "dream"
    argv = ["--out", str(out), *MICRO, "--arch", "dream", "--init", str(init),
            "--blind-prompt", "0.5",
            "--batch", "2", "--seeds", "0", "--eval-every", "2", "--steps", "4",
            "--start-length", "32", "--final-length", "32", "--eval-samples", "2",
            "--final-samples", "2", "--report-lengths", "32",
            "--prior-pairs", "1", "2"]  # fmt: skip
    run = tm.main(argv)
    assert run.step == 4 and isinstance(run.model, DreamModel)
    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == "Dream"
    assert config["architectures"] == ["DreamModel"]
    assert config["mask_token_id"] == tok.token_to_id("<|mdm_mask|>")
    meta = json.loads((out / "training.json").read_text())
    assert meta["objective"].startswith("Dream (shifted logits)")
    assert meta["objective"].endswith("prompt blind to the canvas on 50% of rows")
    loaded, tokenizer = load_checkpoint(out)
    assert isinstance(loaded, DreamModel) and not isinstance(loaded, LLaDAModel)
    llm = LLM(str(out), dtype="float32", kv_cache_memory="16MiB")
    prompt = tokenizer.encode("k001 : 1 2 3 ; k002 : 4 5 6 ; ? k002")
    params = tm.SamplingParams(gen_length=8, block_length=8, steps=8)
    (answer,) = llm.generate([prompt], params)
    assert len(answer.token_ids) <= 8
    # The engine's answer is the training script's sampler's (same model, same ids).
    assert tm.sampled_answers(llm.engine.model, [prompt]) == [answer.token_ids]


def test_probe_readers_are_the_masks_for_llada_and_one_row_earlier_for_dream():
    m, length = 40, 8
    assert wp.voter_rows("readers", m, length) == wp.voter_rows("mask", m, length)
    assert wp.voter_rows("readers", m, length, shift=1) == slice(39, 47)


def test_probe_runs_on_a_dream_checkpoint(tmp_path, tok):
    model = micro(tok, "dream")
    tm.save(model, model.config, tok, tmp_path, {})
    loaded = wp.load_model(wp.resolve_model(tmp_path))
    prompt = tm.prompt_targets(random.Random(tm.EVAL_SEED), tok, "kv", 64, 0)[0]
    got = wp.summarise([wp.probe_prompt(loaded, prompt)])
    assert set(got) == {0} and set(got[0]) == set(wp.GROUPS)
    for cell in got[0].values():
        assert 0 < cell["share"] < 1 and 1 <= cell["worst_digit_rank"] <= len(prompt)
    assert got[0]["readers"] != got[0]["mask"]  # Dream's readers start one row early


def test_blind_rows_prompt_outputs_ignore_the_canvas(tok):
    # --blind-prompt: in the chosen rows no prompt query sees a canvas key, so the
    # last prompt token (Dream's reader of the first answer slot) must use the
    # prompt; the canvas rows, and the other rows' prompts, still see everything.
    model = micro(tok, "dream").eval()
    ids, positions, key_mask, *_ = kv_batch(tok, model.config)
    blind = torch.tensor([True, False, True])
    other = ids.clone()
    other[:, -tm.GEN_LENGTH :] = tok.token_to_id("7")  # another canvas
    width = ids.shape[1] - tm.GEN_LENGTH
    with torch.no_grad():
        a, b = (model(x, positions, tm.BlindAttention(key_mask, blind))
                for x in (ids, other))  # fmt: skip
        dense = model(ids, positions, DenseAttention(key_mask))
    same = (a[:, :width] - b[:, :width]).abs().amax(dim=(1, 2)) == 0
    assert same.tolist() == [True, False, True]
    torch.testing.assert_close(a[1], dense[1])  # a row not blinded is dense
    assert not torch.equal(a[:, width:], b[:, width:])  # the canvas still sees all


def test_span_shares_of_uniform_attention_are_the_span_fractions(tok):
    # q = 0 in every layer: each query spreads its attention evenly, so every
    # group gives the canvas L / (M + L), the record 6 / (M + L).
    model = micro(tok, "dream").eval()
    for block in model.blocks:
        torch.nn.init.zeros_(block.self_attn.q_proj.weight)
        torch.nn.init.zeros_(block.self_attn.q_proj.bias)
    prompt = tm.prompt_targets(random.Random(tm.EVAL_SEED), tok, "kv", 64, 0)[0]
    m, length = len(prompt), tm.GEN_LENGTH
    spans = {"record": wp.record_columns(prompt)}
    got = wp.summarise_spans([wp.span_shares(model, prompt, spans)])[0]
    for span, size in [("canvas", length), ("record", 6)]:
        assert got[span].keys() == set(wp.GROUPS)
        for cell in got[span].values():
            assert cell["share"] == pytest.approx(size / (m + length), rel=1e-5)


def test_record_columns_are_key_colon_digits_and_semicolon():
    # BOS k1 : 4 5 6 ; k2 : 7 8 9 ; ? k2   (ids stand in for words)
    prompt = [0, 21, 6, 14, 15, 16, 7, 22, 6, 17, 18, 19, 7, 8, 22]
    assert wp.record_columns(prompt) == [7, 8, 9, 10, 11, 12]


@pytest.mark.parametrize(("src", "arch"), [("dream", "dream"), ("llada", "dream"),
                                           ("llada", "llada")])  # fmt: skip
def test_a_deeper_model_grown_from_init_computes_what_the_init_computed(
    tmp_path, tok, src, arch
):
    built = micro(tok, src)  # 1 layer
    tm.save(built, built.config, tok, tmp_path / "init", {})
    shallow = tm.load_model(str(tmp_path / "init")).float()  # as saved (bf16)
    argv = ["--out", "unused", *MICRO, "--arch", arch, "--init",
            str(tmp_path / "init")]  # fmt: skip
    argv[argv.index("--layers") + 1] = "3"
    deep, _ = tm.build(tm.parse_args(argv), tok, seed=1)
    assert len(deep.blocks) == 3
    ids, positions, key_mask, *_ = kv_batch(tok, shallow.config)
    attn = DenseAttention(key_mask)
    with torch.no_grad():
        want = shallow.logits(shallow(ids, positions, attn))
        got = deep.logits(deep(ids, positions, attn))
    torch.testing.assert_close(got, want)
    # the added layers are fresh, apart from their zeroed output projections
    grown = {k: v for k, v in deep.state_dict().items() if tm.LAYER_INDEX.search(k)
             and int(tm.LAYER_INDEX.search(k).group(1)) >= 1}  # fmt: skip
    zeroed = {k for k, v in grown.items() if not v.any()}
    assert zeroed and all(k.endswith(tm.ZERO_WHEN_GROWN) or k.endswith(".bias")
                          for k in zeroed)  # fmt: skip


def test_an_init_wider_than_the_model_is_named(tmp_path, tok):
    wide = micro(tok, "dream")
    tm.save(wide, wide.config, tok, tmp_path / "init", {})
    argv = ["--out", "unused", *MICRO, "--arch", "dream", "--init",
            str(tmp_path / "init")]  # fmt: skip
    argv[argv.index("--mlp") + 1] = "64"
    argv[argv.index("--layers") + 1] = "2"
    with pytest.raises(ValueError, match=r"--init tensor .*mlp.* is \(32, 32\)"):
        tm.build(tm.parse_args(argv), tok, seed=0)


def test_vt_answers_sorts_every_answer_into_one_class(tmp_path, tok):
    import vt_answers

    assert vt_answers.chain_starts("x01 = 4 ; x02 = x01 ; x03 = 7 ; ? x02") == [
        "4",
        "7",
    ]
    model = micro(tok, "dream")
    tm.save(model, model.config, tok, tmp_path / "m", {})
    row = vt_answers.main([str(tmp_path / "m"), "--length", "48", "--hops", "1",
                           "--chains", "3", "--samples", "5"])  # fmt: skip
    assert row["right"] + row["other_start"] + row["neither"] == 5
    assert (row["hops"], row["chains"]) == ([1], 3)


def test_canvas_eos_counts_the_stop_and_what_replaces_it(tmp_path, tok):
    import canvas_eos

    model = micro(tok, "dream")
    tm.save(model, model.config, tok, tmp_path / "m", {})
    row = canvas_eos.main([str(tmp_path / "m"), "--length", "48", "--samples", "4"])
    # needle answers 3 digits, then EOS to the end of the 8-slot canvas
    assert row["eos_slots"] == [0.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0, 1.0]
    vocab = model.config.vocab_size

    def always(word_id):
        def logits(hidden):
            out = torch.zeros(*hidden.shape[:2], vocab)
            out[..., word_id] = 50.0
            return out

        return logits

    model.logits = always(model.config.eos_token_id)
    stats = canvas_eos.slot_stats(model, "needle", 48, 4)
    assert stats["argmax_eos"][3:] == [1.0] * 5 and stats["p_eos"][3:] == [1.0] * 5
    assert stats["filler"] == [0.0] * 8
    model.logits = always(tok.token_to_id("x07"))  # a needle filler word
    stats = canvas_eos.slot_stats(model, "needle", 48, 4)
    assert stats["argmax_eos"] == [0.0] * 8 and stats["p_eos"] == [0.0] * 8
    assert stats["filler"][3:] == [1.0] * 5
    # --recall: the training layout, recall digits masked in the prompt
    forward = model.forward
    prompts = []

    def spy(ids, *rest):
        prompts.append(ids)
        return forward(ids, *rest)

    model.forward = spy
    canvas_eos.slot_stats(model, "needle", 48, 4, recall=2)
    width = prompts[0].shape[1] - tm.GEN_LENGTH
    in_prompt = (prompts[0][:, :width] == model.config.mask_token_id).sum(dim=1)
    assert (in_prompt == 6).all()  # 2 queries x 3 digits per prompt
