"""``maskkv vllm-serve``'s model argument and help (issue 25, item 6): built-in
names resolve as in ``maskkv serve``, every refusal is one line before vLLM
starts (no hub request, no Qwen default), and ``--help`` says what it serves."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from maskkv_vllm.models.builtin import SHIPPED
from maskkv_vllm.vllm_adapter.entrypoints.serve import resolve_model_arg


def test_a_built_in_name_becomes_its_checkpoint_directory():
    retrieval = str(SHIPPED["retrieval"])
    assert resolve_model_arg(["retrieval", "--port", "0"]) == [
        retrieval, "--port", "0"
    ]  # fmt: skip
    assert resolve_model_arg(["--port", "0", "--model", "retrieval"])[-1] == retrieval
    assert resolve_model_arg(["--model=retrieval"]) == [f"--model={retrieval}"]


def test_a_directory_and_a_hub_id_pass_through(tmp_path, monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    assert resolve_model_arg([str(tmp_path), "-tp", "2"]) == [str(tmp_path), "-tp", "2"]
    assert resolve_model_arg(["GSAI-ML/LLaDA-8B-Instruct"]) == [
        "GSAI-ML/LLaDA-8B-Instruct"
    ]


@pytest.mark.parametrize(
    ("argv", "offline", "message"),
    [
        ([], False, "no model: maskkv vllm-serve MODEL"),
        (["--port", "8000"], False, "no model: maskkv vllm-serve MODEL"),
        (["/no/such/dir"], False, "model '/no/such/dir' is neither a checkpoint"),
        (["retrieva"], False, "built-in name (tiny, retrieval)"),
        (["GSAI-ML/LLaDA-8B-Instruct"], True, "HF_HUB_OFFLINE is set"),
    ],
)
def test_a_model_that_cannot_be_served_is_one_line(argv, offline, message, monkeypatch):
    if offline:
        monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    else:
        monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    with pytest.raises(ValueError, match=re.escape(message)) as info:
        resolve_model_arg(argv)
    assert "\n" not in str(info.value)


def _vllm_serve(*argv: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    code = "import sys; from maskkv_vllm.cli import main; sys.exit(main(sys.argv[1:]))"
    return subprocess.run(
        [sys.executable, "-c", code, "vllm-serve", *argv],
        capture_output=True, text=True, timeout=300, env=env,
    )  # fmt: skip


@pytest.mark.vllm
@pytest.mark.parametrize("argv", [[], ["/no/such/dir"], ["nope"], ["org/model"]])
def test_vllm_serve_refuses_in_one_line_before_vllm_starts(argv):
    pytest.importorskip("vllm")
    done = _vllm_serve(*argv)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("maskkv: error: "), done.stderr


@pytest.mark.vllm
def test_vllm_serve_help_names_llada_and_maskkv():
    pytest.importorskip("vllm")
    done = _vllm_serve("--help")
    assert done.returncode == 0, done.stderr
    head = done.stdout[:2000]
    assert "maskkv vllm-serve MODEL" in head and "LLaDA" in head and "MaskKV" in head
    assert "Defaults to Qwen" not in done.stdout
