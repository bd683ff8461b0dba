"""CUDA paths, checked against the CPU reference (run with ``pytest -m gpu``)."""

from __future__ import annotations

import json
import math
import os
import random
from pathlib import Path

import pytest
import torch

from maskkv_vllm.config import CacheConfig
from maskkv_vllm.kv_cache.paged_attention import backend_for
from maskkv_vllm.models.llada_config import LLaDAConfig
from maskkv_vllm.models.loader import load_checkpoint, load_model
from maskkv_vllm.sampling_params import SamplingParams
from maskkv_vllm.worker.model_runner import ModelRunner
from tests.gpu.conftest import gpu_model

pytestmark = pytest.mark.gpu

LLADA_8B_ATTENTION = {"n_layers": 2, "n_heads": 32, "head_dim": 128}
"""LLaDA-8B's attention shape (hidden 4096); 2 layers, the tiny MLP."""


def test_cuda_logits_match_cpu(gqa_dir):
    cpu = load_model(gqa_dir)
    gpu = load_model(gqa_dir, device="cuda")
    ids = torch.tensor([[256, 72, 105, 33, 261, 261, 261, 261]])
    pos = torch.arange(8)[None]
    want = cpu.logits(cpu(ids, pos))
    got = gpu.logits(gpu(ids.cuda(), pos.cuda())).cpu()
    torch.testing.assert_close(got, want, atol=1e-3, rtol=1e-3)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_cuda_prefix_refresh_every_step_equals_none(tiny_dir, dtype):
    model_tok = load_checkpoint(tiny_dir, dtype=dtype, device="cuda")
    params = SamplingParams(gen_length=16, block_length=8, steps=16)
    prompts = ["hello there", "x"]
    none = ModelRunner(*model_tok, CacheConfig("none")).generate(prompts, params)
    prefix = ModelRunner(*model_tok, CacheConfig("prefix", 1)).generate(prompts, params)
    assert [o.token_ids for o in none] == [o.token_ids for o in prefix]


@pytest.mark.skipif(
    not os.environ.get("MASKKV_LLADA_CKPT"),
    reason="set MASKKV_LLADA_CKPT to a real LLaDA-8B checkpoint directory",
)
def test_real_llada_checkpoint_config_and_load():
    """The published facts (llada.md §2) hold for the real checkpoint, and it loads."""
    path = Path(os.environ["MASKKV_LLADA_CKPT"])
    raw = json.loads((path / "config.json").read_text())
    cfg = LLaDAConfig.from_dict(raw)
    assert (cfg.d_model, cfg.n_heads, cfg.n_layers) == (4096, 32, 32)
    assert (cfg.mask_token_id, cfg.eos_token_id) == (126336, 126081)
    model, tok = load_checkpoint(path, dtype="bfloat16", device="cuda")
    assert tok.mask_token_id == 126336
    ids = tok.encode_chat([{"role": "user", "content": "What is 2 + 2?"}])
    params = SamplingParams(gen_length=32, block_length=32, steps=32)
    (out,) = ModelRunner(model, tok).generate([ids], params)
    assert "4" in out.text


@pytest.fixture(scope="module")
def llada8b_bf16():
    """(model, tokenizer): LLaDA-8B attention shapes in bf16, drawn on the GPU."""
    return gpu_model(**LLADA_8B_ATTENTION)


def _prompt(n: int, seed: int) -> list[int]:
    return [256] + [random.Random(seed).randrange(32, 127) for _ in range(n - 1)]


def test_bf16_llada8b_shapes_paged_equals_prefix_on_the_torch_path(
    llada8b_bf16, monkeypatch
):
    # The torch path runs one SDPA over the same keys as the prefix path (the
    # longest prompt fills whole pages), so bf16 tokens agree exactly.
    model, tok = llada8b_bf16
    prompts = [_prompt(512, 0), _prompt(301, 1)]
    params = SamplingParams(gen_length=32, block_length=8, steps=32)
    prefix = ModelRunner(model, tok, CacheConfig("prefix")).generate(prompts, params)
    monkeypatch.setenv("MASKKV_PAGED_ATTENTION", "torch")
    backend_for.cache_clear()
    try:
        paged = ModelRunner(model, tok, CacheConfig("paged", kv_cache_memory="1GiB"))
        got = paged.generate(prompts, params)
    finally:
        monkeypatch.undo()
        backend_for.cache_clear()
    assert [o.token_ids for o in got] == [o.token_ids for o in prefix]
    pool = paged.prompt_cache.page_pool
    assert pool.num_free_pages == pool.num_usable_pages


def test_bf16_llada8b_shapes_maskkv_holds_the_pages_its_heads_fill(llada8b_bf16):
    model, tok = llada8b_bf16
    sampler = ModelRunner(model, tok, CacheConfig("paged", kv_cache_memory="1GiB"))
    params = SamplingParams(
        gen_length=32, block_length=8, steps=32, kv_policy="maskkv", kv_budget=64
    )
    seq = sampler.make_sequence(0, _prompt(1000, 2), params)
    sampler.step([seq])  # step 0: vote, keep, write only the kept entries
    pool = sampler.prompt_cache.page_pool
    (key,) = seq.cache_keys
    kept = sampler.prompt_cache.cache.request_stats(key)["tokens_per_head"]
    assert len(kept) == 2 and all(len(heads) == 32 for heads in kept)
    filled = sum(math.ceil(n / 16) for heads in kept for n in heads)
    assert pool.num_used_pages == filled < 2 * 32 * math.ceil(1000 / 16)
    while not seq.is_finished:  # the cached steps: the Triton kernel on CUDA
        sampler.step([seq])
    assert len(sampler.make_output(seq).token_ids) > 0
    sampler.free(seq)
    assert pool.num_free_pages == pool.num_usable_pages
