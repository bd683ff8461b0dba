"""The vLLM plugin on CUDA: logit parity, diffusion parity, blocks held by MaskKV.

Run with ``pytest -m "gpu and vllm" tests/gpu/test_vllm_gpu.py`` in an
environment with the CUDA wheel ``vllm==0.32.0`` (the adapter's pinned version)
and this package. Without CUDA the tests are collected and skipped
(``tests/conftest.py``); without vLLM the module is skipped.

Oracles as on the CPU (``tests/vllm_adapter``), on the same device:
``load_model(dir, device="cuda")`` for the logits, and the embedded engine
``maskkv_vllm.engine.llm.LLM(dir, kv_policy=..., device="cuda")`` (cache mode
"paged") for the denoising loop. One in-process vLLM ``LLM`` per module.

``make_llm`` picks ``MaskKVGPUWorker`` on CUDA (vLLM's ``Worker`` building
``MaskKVGPUModelRunner``, the denoising mixin over V1's ``GPUModelRunner``);
LLaDA's config hook chooses the V1 runner, so these tests leave
``VLLM_USE_V2_MODEL_RUNNER`` unset and check which runner ran. vLLM's kernels
never touch the pool: our step attention reads it as head-pages
(``request_pages.VllmPageStore``, any backend layout) through ``kv.paged_attention``
(the Triton kernel when Triton is installed). The same logic runs on the CPU in
``tests/vllm_logic`` and ``tests/vllm_adapter``; bf16 at LLaDA-8B attention
shapes with vLLM's memory profiling is ``test_vllm_bf16.py``.
"""

from __future__ import annotations

import random

import pytest
import torch

pytest.importorskip("vllm")

from maskkv_vllm.engine.llm import LLM as EmbeddedLLM  # noqa: E402
from maskkv_vllm.models.loader import load_model  # noqa: E402
from maskkv_vllm.models.tiny import write_tiny_checkpoint  # noqa: E402
from maskkv_vllm.sampling_params import SamplingParams  # noqa: E402

pytestmark = [pytest.mark.gpu, pytest.mark.vllm]

NUM_BLOCKS = 40  # 39 usable + the null block
BLOCK = 32
VOCAB = 262
MASK = 261
HELLO = [256, 72, 101, 108, 108, 111]
CANVAS_IDS = HELLO + [MASK] * 8
LONG = [256] + [random.Random(0).randrange(32, 127) for _ in range(199)]  # M = 200

ENGINE_ARGS = {
    "dtype": "float32",
    "enforce_eager": True,
    "block_size": BLOCK,
    "max_model_len": 512,
    "num_gpu_blocks_override": NUM_BLOCKS,
    "gpu_memory_utilization": 0.3,
    "seed": 0,
}


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    """Tiny LLaDA, head_dim 32, seed 0 (the CPU adapter tests' checkpoint)."""
    return str(
        write_tiny_checkpoint(tmp_path_factory.mktemp("tiny"), seed=0, head_dim=32)
    )


@pytest.fixture(scope="module")
def embedded(ckpt):
    """The reference engine on CUDA; policy and budget come with each request."""
    return EmbeddedLLM(
        ckpt, kv_policy="full", device="cuda", dtype="float32", kv_cache_memory="1GiB"
    )


def _reference(embedded, prompts, params):
    return [
        (o.token_ids, o.text, o.finish_reason)
        for o in embedded.generate(prompts, params, use_tqdm=False)
    ]


def _ours(llm, prompts, params):
    from maskkv_vllm.vllm_adapter.entrypoints.api import generate

    return [
        (o.token_ids, o.text, o.finish_reason) for o in generate(llm, prompts, params)
    ]


def test_forward_logits_match_our_model_on_cuda(llm, ckpt):
    def logits(model):
        ids = torch.tensor(CANVAS_IDS, device="cuda")
        with torch.no_grad():
            hidden = model(ids, torch.arange(len(ids), device="cuda"))
            return model.compute_logits(hidden).cpu()

    (got,) = llm.apply_model(logits)
    model = load_model(ckpt, device="cuda")
    with torch.no_grad():
        ids = torch.tensor([CANVAS_IDS], device="cuda")
        hidden = model(ids, torch.arange(len(CANVAS_IDS), device="cuda")[None])
        ref = model.logits(hidden)[0].float().cpu()
    torch.testing.assert_close(got, ref, atol=1e-3, rtol=0)


def _cuda_probe(worker):
    """Classes in the worker (V1 runner or not), and the pool's pages over the
    CUDA cache tensor. ``collective_rpc`` hands callables vLLM's
    ``WorkerWrapperBase``; the worker is its ``.worker``."""
    from vllm.v1.worker.gpu_model_runner import GPUModelRunner

    from maskkv_vllm.vllm_adapter.request_pages import VllmPageStore

    runner = worker.model_runner
    model = runner.get_model()
    cache = model.kv_pool.kv_cache
    store = VllmPageStore(cache, model.num_local_kv_heads, BLOCK, model.config.head_dim)
    return (
        type(worker.worker).__name__,
        type(runner).__name__,
        isinstance(runner, GPUModelRunner) and not worker.use_v2_model_runner,
        store.k_cache.device.type,
        store.k_cache.shape[0] == NUM_BLOCKS * model.num_local_kv_heads,
    )


def test_cuda_worker_v1_runner_and_page_pool(llm):
    assert llm.collective_rpc(_cuda_probe) == [
        ("MaskKVGPUWorker", "MaskKVGPUModelRunner", True, "cuda", True)
    ]


@pytest.mark.parametrize(
    "params",
    [
        SamplingParams(gen_length=16, block_length=8, steps=8),
        SamplingParams(gen_length=32, block_length=8, steps=16),
    ],
    ids=["8steps", "16steps"],
)
def test_greedy_full_cache_matches_the_embedded_engine(llm, embedded, params):
    prompts = ["Hello", HELLO + [33]]
    assert _ours(llm, prompts, params) == _reference(embedded, prompts, params)


@pytest.mark.parametrize(
    ("policy", "budget", "reserved", "held"),
    # as on the CPU (tests/vllm_adapter/test_diffusion_engine.py)
    [("snapkv", 64, 6, 4), ("full", None, 14, 14)],
)
def test_blocks_held_after_step_0_and_parity(
    llm, embedded, scheduler, policy, budget, reserved, held
):
    params = SamplingParams(
        gen_length=32, block_length=16, steps=16, kv_policy=policy, kv_budget=budget
    )
    assert _ours(llm, [LONG], params) == _reference(embedded, [LONG], params)
    ((_, freed),) = scheduler.freed.items()
    assert freed == reserved - held
    frees = scheduler.free_after_step
    assert frees[0] == NUM_BLOCKS - 1 - held
    assert set(frees[1:-1]) == {frees[0]}
    assert frees[-1] == NUM_BLOCKS - 1


@pytest.mark.parametrize(("policy", "budget"), [("maskkv", 48), ("maskkv", 32)])
def test_maskkv_matches_the_embedded_engine(llm, embedded, scheduler, policy, budget):
    params = SamplingParams(
        gen_length=32, block_length=16, steps=16, kv_policy=policy, kv_budget=budget
    )
    assert _ours(llm, [LONG], params) == _reference(embedded, [LONG], params)
    ((_, freed),) = scheduler.freed.items()
    assert freed >= 1


def test_budget_above_the_prompt_equals_full(llm, scheduler):
    full = SamplingParams(gen_length=32, block_length=16, steps=16)
    evicting = SamplingParams(
        gen_length=32, block_length=16, steps=16, kv_policy="snapkv", kv_budget=300
    )
    assert _ours(llm, [LONG], evicting) == _ours(llm, [LONG], full)
    # One entry per request (``release_unused_blocks`` runs once, after step
    # 0, for every request, full cache included): B = 300 >= M = 200 keeps the
    # whole prompt, so both shrink from 14 reserved blocks to 14 held.
    assert list(scheduler.freed.values()) == [0, 0]
