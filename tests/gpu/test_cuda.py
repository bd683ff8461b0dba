"""CUDA paths, checked against the CPU reference (run with ``pytest -m gpu``)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from maskkv_vllm.config import CacheConfig
from maskkv_vllm.models.llada_config import LLaDAConfig
from maskkv_vllm.models.loader import load_checkpoint, load_model
from maskkv_vllm.sampler.diffusion_sampler import DiffusionSampler
from maskkv_vllm.sampling_params import SamplingParams

pytestmark = pytest.mark.gpu


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
    none = DiffusionSampler(*model_tok, CacheConfig("none")).generate(prompts, params)
    prefix = DiffusionSampler(*model_tok, CacheConfig("prefix", 1)).generate(
        prompts, params
    )
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
    (out,) = DiffusionSampler(model, tok).generate([ids], params)
    assert "4" in out.text
