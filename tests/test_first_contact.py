"""What a new user sees (issue 15): results that never overwrite the evidence, defaults
that follow the machine, a make-tiny that cannot mix checkpoints, --version, --help with
defaults, progress, log lines, a one-shot pool sized to its prompts, and a README whose
command and layout lists match the code."""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import pytest
import torch
from starlette.testclient import TestClient

from maskkv_vllm import __version__, machine_defaults
from maskkv_vllm.cli import build_parser, main
from maskkv_vllm.config import CacheConfig, EngineConfig
from maskkv_vllm.engine.llm_engine import LLMEngine
from maskkv_vllm.entrypoints.openai_server import build_app
from maskkv_vllm.entrypoints.server_config import ServerConfig
from maskkv_vllm.models.loader import load_model

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
EVAL = ["eval", "--model", "tiny", "--samples", "2", "--prompt-tokens", "48",
        "--fractions", "0.5", "--policies", "snapkv", "--solved-at", "0"]  # fmt: skip


@pytest.fixture
def cache_home(tmp_path, monkeypatch):
    monkeypatch.setenv("MASKKV_CACHE", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)
    return tmp_path


# -- item 1: results never overwrite -----------------------------------------------


def test_eval_writes_a_fresh_folder_and_says_where(cache_home, capsys):
    assert main(EVAL) == 0
    (run,) = (cache_home / "maskkv-runs").iterdir()
    assert run.name.startswith("eval-") and (run / "eval.json").is_file()
    assert f"results go to maskkv-runs/{run.name}/" in capsys.readouterr().err


def test_an_eval_with_nothing_to_retain_says_so_and_leaves_no_folder(
    cache_home, capsys
):
    # The random tiny model answers no task: retention would be 0 / 0.
    assert main(EVAL[:-2]) == 2
    err = capsys.readouterr().err
    assert "the full cache solves no task at solved_at=0.5 (kv 0.00, vt 0.00)" in err
    assert list((cache_home / "maskkv-runs").iterdir()) == []


def test_an_existing_results_folder_needs_force(cache_home, capsys):
    out = cache_home / "evidence"
    out.mkdir()
    (out / "eval.json").write_text("{}")
    assert main([*EVAL, "--out-dir", str(out)]) == 2
    assert "already holds results (eval.json): pass --force" in capsys.readouterr().err
    assert (out / "eval.json").read_text() == "{}"
    assert main([*EVAL, "--out-dir", str(out), "--force"]) == 0
    assert json.loads((out / "eval.json").read_text())


# -- item 2: defaults follow the machine -------------------------------------------


def test_auto_defaults_on_a_cpu_machine(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert machine_defaults.device("auto") == "cpu"
    assert machine_defaults.dtype("auto", "cpu") == "float32"
    assert machine_defaults.pool("auto", "cpu") == "1GiB"
    assert machine_defaults.device("cuda:1") == "cuda:1"  # a choice is kept


def test_auto_defaults_on_a_gpu_machine(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda d: (40 * 2**30, 80 * 2**30))
    assert machine_defaults.device("auto") == "cuda"
    assert machine_defaults.dtype("auto", "cuda") == "bfloat16"
    assert machine_defaults.pool("auto", "cuda") == 20 * 2**30


@pytest.mark.parametrize(
    "command", ["generate", "serve", "eval", "profile", "longbench"]
)
def test_every_command_defaults_to_auto(command):
    sub = build_parser()._subparsers._group_actions[0].choices[command]
    defaults = {a.dest: a.default for a in sub._actions}
    assert defaults["device"] == defaults["dtype"] == "auto"
    if "kv_cache_memory" in defaults:
        assert defaults["kv_cache_memory"] == "auto"


# -- item 3: make-tiny over an existing checkpoint -----------------------------------


def test_make_tiny_refuses_a_non_empty_folder_and_force_writes_a_clean_one(
    tmp_path, capsys
):
    out = tmp_path / "ck"
    assert main(["make-tiny", str(out), "--shards", "3", "--n-layers", "3"]) == 0
    assert main(["make-tiny", str(out)]) == 2
    assert "is not empty: pass --force" in capsys.readouterr().err
    assert main(["make-tiny", str(out), "--force", "--n-layers", "1"]) == 0
    names = sorted(p.name for p in out.iterdir())
    assert names == [
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
    ]
    assert load_model(out).config.n_layers == 1


# -- item 4: what there is to see --------------------------------------------------


def test_version(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert (
        e.value.code == 0 and capsys.readouterr().out.strip() == f"maskkv {__version__}"
    )


def test_help_shows_descriptions_defaults_and_policy_choices(capsys):
    with pytest.raises(SystemExit):
        main(["generate", "--help"])
    text = " ".join(capsys.readouterr().out.split("options:", 1)[1].split())
    for flag in ("--gen-length", "--steps", "--block-length", "--temperature",
                 "--cfg-scale", "--threshold", "--dtype", "--device"):  # fmt: skip
        entry = text[text.index(flag + " ") :][:400]
        assert "(default:" in entry, flag
    assert "{adakv,full,maskkv," in text
    with pytest.raises(SystemExit):
        main(["make-tiny", "--help"])
    text = " ".join(capsys.readouterr().out.split("options:", 1)[1].split())
    for flag in ("--seed", "--shards", "--n-layers", "--n-heads", "--head-dim"):
        assert "(default:" in text[text.index(flag + " ") :][:200], flag


@pytest.mark.parametrize("flag", ["--help", "-h"])
def test_top_level_help_lists_every_command(flag, capsys):
    # Was a TypeError: argparse %-formats each command's help ("~5% of ...").
    with pytest.raises(SystemExit) as e:
        main([flag])
    out = capsys.readouterr().out
    assert e.value.code == 0 and "~5% of the prompt KV" in out
    for name in ("generate", "serve", "demo", "vllm-serve", "make-tiny"):
        assert name in out


def test_help_states_each_default_once(capsys):
    from maskkv_vllm.cli import build_parser

    sub = next(a for a in build_parser()._actions if a.dest == "command")
    for name in sub.choices:
        if name == "vllm-serve":  # vLLM's own parser, built only when run
            continue
        with pytest.raises(SystemExit):
            main([name, "--help"])
        text = " ".join(capsys.readouterr().out.split())
        for entry in text.split(" -")[1:]:
            assert entry.count("(default:") <= 1, (name, entry)
            assert "(default: None)" not in entry, (name, entry)


def test_generate_shows_step_progress_and_sizes_its_pool(cache_home, capsys):
    assert main(["generate", "hello", "--gen-length", "16", "--block-length", "8"]) == 0
    captured = capsys.readouterr()
    assert "denoising" in captured.err and "16/16" in captured.err
    # 2 layers x 4 KV heads x 1 page (6 tokens) for the full cache, not 1 GiB.
    assert "[page pool: 8 pages of" in captured.out


def test_profile_shows_progress(cache_home, capsys):
    data = cache_home / "calib.txt"
    data.write_text("one text\n\nanother text\n\na third")
    assert main(["profile", "--data", str(data), "-o", "p.json"]) == 0
    assert "calibration prompts" in capsys.readouterr().err


def test_the_server_logs_a_summary_each_request_and_engine_stats(tiny, caplog):
    model, tok = tiny
    cache = CacheConfig("paged", page_size=16, num_pages=64)
    engine = LLMEngine(EngineConfig(model="tiny", cache=cache), model, tok)
    server = ServerConfig(model_name="tiny-llada", stats_interval=0.01)
    body = {"prompt": "hello", "max_tokens": 8, "block_length": 8, "steps": 8}
    with (
        caplog.at_level(logging.INFO, logger="maskkv_vllm"),
        TestClient(build_app(engine, server)) as client,
    ):
        assert client.post("/v1/completions", json=body).status_code == 200
    lines = [r.getMessage() for r in caplog.records]
    assert any(
        re.match(r"serving tiny-llada: model tiny \(2 layers x 4 KV heads x 32\), "
                 r"torch.float32 on cpu, 63 KV pages of 16 slots .*max_model_len "
                 r"4096, default policy full", line)
        for line in lines
    ), lines  # fmt: skip
    assert any(re.match(r"request cmpl-\w+ (stop|length): 6 prompt \+ \d+ answer "
                        r"tokens, 48 prompt KV entries kept, 0 evicted, 8 pages", line)
               for line in lines), lines  # fmt: skip
    assert any(
        line.startswith("engine: ") and "KV pages used" in line for line in lines
    )


# -- item 6: the README lists what the code has --------------------------------------


def test_readme_names_every_command():
    commands = set(build_parser()._subparsers._group_actions[0].choices)
    cli = README[README.index("**CLI:**") :].split("\n\n", 1)[0]
    named = set(re.findall(r"`maskkv\s+([a-z][a-z-]*)", cli))
    assert named - {"COMMAND"} == commands
    layout_cli = re.search(r"cli/\s+`maskkv ([a-z|-]+)`", README).group(1)
    assert set(layout_cli.split("|")) == commands


def test_readme_layout_names_every_package_and_module():
    block = README[README.index("## Layout") :].split("```")[1]
    package = ROOT / "maskkv_vllm"
    for path in sorted(package.iterdir()):
        if path.name.startswith("__") or path.name.endswith(".pyc"):
            continue
        name = path.name + ("/" if path.is_dir() else "")
        assert name in block, f"the README's layout does not name {name}"
        if path.is_dir():
            for module in path.glob("*.py"):
                if module.name != "__init__.py":
                    assert module.name in block, f"layout misses {name}{module.name}"
    for named in set(re.findall(r"\b([a-z_]+\.py)\b", block)):
        assert list(ROOT.rglob(named)), f"the layout names {named}, which is gone"


def test_readme_names_every_test_mark():
    text = (ROOT / "pyproject.toml").read_text()
    marks = re.findall(r'^\s+"(\w+): ', text, flags=re.M)
    line = next(line for line in README.splitlines() if line.startswith("tests/"))
    assert set(marks) <= set(re.findall(r"\w+", line)), (marks, line)


def test_readme_spells_the_vllm_command_as_vllm_does():
    # Issue 25, item 12: vLLM has no --plugin flag; its CLI parses before any
    # plugin loads. The first vLLM lines say VLLM_PLUGINS=maskkv vllm serve.
    readme = (ROOT / "README.md").read_text()
    first = readme[readme.index("**vLLM.**") :][:600]
    assert (
        "`VLLM_PLUGINS=maskkv vllm serve CKPT`" in first
        and "no\n`--plugin` flag" in first
    )
    assert "vllm serve --plugin" not in readme
