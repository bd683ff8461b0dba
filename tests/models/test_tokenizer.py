from __future__ import annotations

import pytest

from maskkv_vllm.models.builtin import resolve_model


def test_byte_tokenizer_round_trip_and_special_ids(tiny):
    _, tok = tiny
    ids = tok.encode("Héllo, wörld")
    assert ids[0] == tok.bos_token_id == 256
    assert tok.decode(ids) == "Héllo, wörld"
    assert (tok.eos_token_id, tok.eot_token_id, tok.mask_token_id) == (257, 260, 261)
    # LLaDA keeps its mask id inside the vocabulary.
    assert tok.mask_token_id < tok.vocab_size == 262
    assert tok.stop_token_ids == (257, 260)


def test_chat_template_is_llama3_style(tiny):
    _, tok = tiny
    text = tok.render_chat([{"role": "user", "content": "Hi"}])
    assert text == (
        "<|startoftext|><|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n"
    )
    ids = tok.encode_chat([{"role": "user", "content": "Hi"}])
    assert ids[:2] == [256, 258] and ids.count(256) == 1


def test_bad_chat_role_and_prompt_type(tiny):
    _, tok = tiny
    with pytest.raises(ValueError, match="chat role 'robot'"):
        tok.render_chat([{"role": "robot", "content": "x"}])
    with pytest.raises(TypeError, match="prompt must be a str, got int"):
        tok.encode(5)


def test_builtin_tiny_is_written_once(tmp_path, monkeypatch):
    monkeypatch.setenv("MASKKV_CACHE", str(tmp_path))
    first = resolve_model("tiny")
    assert (first / "config.json").is_file() and (first / "tokenizer.json").is_file()
    stamp = (first / "model.safetensors").stat().st_mtime_ns
    assert resolve_model("tiny") == first
    assert (first / "model.safetensors").stat().st_mtime_ns == stamp
    with pytest.raises(FileNotFoundError, match="'nope' is neither"):
        resolve_model("nope")


def test_the_retrieval_model_says_which_words_it_does_not_know(caplog):
    # Issue 25, item 8: unknown words were EOS (id 1), silently: an English
    # question was a run of EOS ids and got an empty answer.
    from maskkv_vllm.models.loader import load_checkpoint

    _, tok = load_checkpoint(resolve_model("retrieval"))
    assert (tok.unk_token, tok.unk_token_id, tok.vocab_size) == ("<unk>", 596, 597)

    def said():  # the tokenizer's own records (another test may have left INFO on)
        name = "maskkv_vllm.models.tokenizer"
        return [r.getMessage() for r in caplog.records if r.name == name]

    caplog.clear()
    with caplog.at_level("WARNING", logger="maskkv_vllm.models.tokenizer"):
        ids = tok.encode("? k600 k511 France?")
    assert ids == [0, 8, 596, 531, 596]
    assert said() == [
        "2 word(s) outside the model's vocabulary became <unk>: 'k600', 'France?'"
    ]
    caplog.clear()
    with caplog.at_level("WARNING", logger="maskkv_vllm.models.tokenizer"):
        tok.encode("k000 : 1 2 3 ; ? k000 <unk>")
    assert said() == [] and tok.unknown_words("a k001 b") == ["a", "b"]


def test_a_byte_level_tokenizer_has_no_unknown_words(tiny):
    _, tok = tiny
    assert tok.unk_token_id is None and tok.unknown_words("anything at all") == []


def _stream_text(hf, prompt_ids, ids):
    """What vLLM's front end shows: a DecodeStream seeded with the prompt."""
    from tokenizers.decoders import DecodeStream

    stream = DecodeStream(skip_special_tokens=True)
    for i in prompt_ids:
        stream.step(hf, i)
    return "".join(filter(None, (stream.step(hf, i) for i in ids)))


def test_an_answer_reads_as_it_does_after_its_prompt(tiny):
    # Issue 25, item 9: the embedded engine decoded the answer alone ("0 7 0"),
    # vLLM after the prompt (" 0 7 0"); both now take the latter.
    from maskkv_vllm.models.continuation import continuation_text
    from maskkv_vllm.models.loader import load_checkpoint

    _, words = load_checkpoint(resolve_model("retrieval"))
    prompt, answer = words.encode("k042 : 0 7 0 ; ? k042"), words.encode("0 7 0")[1:]
    got = continuation_text(words.decode, prompt, answer)
    assert got == " 0 7 0" == _stream_text(words.tokenizer, prompt, answer)
    assert words.decode(answer) == "0 7 0"
    _, tok = tiny  # byte-level: spaces are spelled, both ways agree
    prompt, answer = tok.encode("Héllo"), tok.encode(" wörld, ok", False)
    assert continuation_text(tok.decode, prompt, answer) == " wörld, ok"
    assert continuation_text(tok.decode, [], answer) == " wörld, ok"
    split = tok.encode("é", False)  # a character cut at the seam: decoded alone
    assert continuation_text(tok.decode, prompt + split[:1], split[1:]) == "\ufffd"


def test_the_embedded_engine_answers_with_the_continuation_text():
    from maskkv_vllm.engine.llm import LLM
    from maskkv_vllm.sampling_params import SamplingParams

    llm = LLM("retrieval", dtype="float32", kv_cache_memory="64MiB")
    params = SamplingParams(gen_length=8, block_length=8, steps=8)
    (out,) = llm.generate(["k042 : 0 7 0 ; k007 : 1 2 3 ; ? k042"], params)
    assert out.text == " 0 7 0"
