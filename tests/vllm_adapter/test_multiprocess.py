"""The denoising loop in vLLM's multi-process engine (engine core in a subprocess).

Runs ``examples/vllm_generate.py`` with VLLM_ENABLE_V1_MULTIPROCESSING=1: the
scheduler and runner are built from their qualified names in the engine-core
process, where the entry point (or ``make_llm``'s ``register()``, inherited
only in-process) must have registered LLaDA. Output must equal the embedded
engine's.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("vllm")

from maskkv_vllm.engine.llm import LLM as EmbeddedLLM  # noqa: E402
from maskkv_vllm.sampling_params import SamplingParams  # noqa: E402

pytestmark = pytest.mark.vllm

ROOT = Path(__file__).resolve().parents[2]
PROMPTS = ["Hello", "The cat"]


def test_multiprocess_engine_matches_the_embedded_engine(vllm_tiny_dir):
    env = {**os.environ, "VLLM_ENABLE_V1_MULTIPROCESSING": "1"}
    cmd = [
        sys.executable, str(ROOT / "examples" / "vllm_generate.py"),
        str(vllm_tiny_dir), *PROMPTS, "--kv-policy", "snapkv", "--kv-budget", "4",
    ]  # fmt: skip
    run = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert run.returncode == 0, run.stderr[-3000:]
    got = [json.loads(line) for line in run.stdout.splitlines() if line.startswith("{")]
    params = SamplingParams(
        gen_length=32, block_length=8, steps=16, kv_policy="snapkv", kv_budget=4
    )
    ref = EmbeddedLLM(str(vllm_tiny_dir), kv_policy="full", dtype="float32")
    want = ref.generate(PROMPTS, params, use_tqdm=False)
    assert [g["token_ids"] for g in got] == [w.token_ids for w in want]
    assert [g["text"] for g in got] == [w.text for w in want]


REFUSAL = """
import json, sys
from maskkv_vllm.sampling_params import SamplingParams
from maskkv_vllm.vllm_adapter.entrypoints.api import generate, make_llm
llm = make_llm(sys.argv[1], max_model_len=512, num_gpu_blocks_override=40)
huge = SamplingParams(gen_length=256, block_length=32, steps=8, canvas_cache="adaptive")
try:
    generate(llm, [[256] + [65] * 255], huge)
except ValueError as e:
    print(json.dumps({"refused": str(e)}))
out = generate(llm, ["Hello"], SamplingParams(gen_length=16, block_length=8, steps=8))
print(json.dumps({"token_ids": out[0].token_ids}))
"""


def test_a_refused_request_does_not_take_the_engine_core_down(vllm_tiny_dir):
    # The engine core runs add_request in its busy loop and does not catch what
    # it raises: a request above the whole pool killed it (EngineDeadError for
    # every later request, as under ``vllm serve``).
    env = {**os.environ, "VLLM_ENABLE_V1_MULTIPROCESSING": "1"}
    cmd = [sys.executable, "-c", REFUSAL, str(vllm_tiny_dir)]
    run = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert run.returncode == 0, run.stderr[-3000:]
    got = [json.loads(line) for line in run.stdout.splitlines() if line.startswith("{")]
    assert "needs 48 KV blocks" in got[0]["refused"]
    assert "the pool holds 39" in got[0]["refused"]
    ref = EmbeddedLLM(str(vllm_tiny_dir), kv_policy="full", dtype="float32")
    params = SamplingParams(gen_length=16, block_length=8, steps=8)
    assert got[1]["token_ids"] == ref.generate(["Hello"], params)[0].token_ids
    assert "maskkv: refused request" in run.stdout + run.stderr
