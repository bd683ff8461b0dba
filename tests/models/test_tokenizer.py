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
