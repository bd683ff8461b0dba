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
    with caplog.at_level("WARNING", logger="maskkv_vllm.models.tokenizer"):
        ids = tok.encode("? k600 k511 France?")
    assert ids == [0, 8, 596, 531, 596]
    assert caplog.messages == [
        "2 word(s) outside the model's vocabulary became <unk>: 'k600', 'France?'"
    ]
    caplog.clear()
    with caplog.at_level("WARNING", logger="maskkv_vllm.models.tokenizer"):
        tok.encode("k000 : 1 2 3 ; ? k000 <unk>")
    assert caplog.messages == [] and tok.unknown_words("a k001 b") == ["a", "b"]


def test_a_byte_level_tokenizer_has_no_unknown_words(tiny):
    _, tok = tiny
    assert tok.unk_token_id is None and tok.unknown_words("anything at all") == []
