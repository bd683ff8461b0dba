"""The vLLM plugin on CUDA: logit parity, diffusion parity, blocks freed by MaskKV.

Run with ``pytest -m "gpu and vllm" tests/gpu/test_vllm_gpu.py`` in an
environment with the CUDA wheel ``vllm==0.32.0`` (the adapter's pinned version)
and this package. Without CUDA the tests are collected and skipped
(``tests/conftest.py``); without vLLM the module is skipped.

Oracles as on the CPU (``tests/vllm_adapter``), on the same device:
``load_model(dir, device="cuda")`` for the prefill log-probs, and the embedded
engine ``maskkv_vllm.engine.llm.LLM(dir, kv_policy=..., device="cuda")`` (cache
mode "paged") for the denoising loop. One in-process vLLM ``LLM`` per module.

Status: written, never run (no GPU was lent). ``make_llm`` picks
``MaskKVGPUWorker`` on CUDA (vLLM's ``Worker`` building ``MaskKVGPUModelRunner``,
the CPU runner's denoising mixin over ``GPUModelRunner``), sets
``VLLM_USE_V2_MODEL_RUNNER=0`` and reads the CUDA backends' ``(B, H, N, 2d)``
KV view through ``kv_layout.PagedCacheLayout``; the pure parts are tested on
the CPU in ``tests/vllm_adapter/test_gpu_path.py``. In fp32 vLLM 0.32.0 on
SM90 selects TRITON_ATTN (FlashAttention and FlashInfer take fp16/bf16 only)
[read, ``platforms/cuda.py``]. The eviction tests also need
``evicting_attention.py`` to build its padding and attention masks on the
query's device (today they are CPU tensors; ``docs/vllm_notes.md`` §9).
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

NUM_BLOCKS = 32  # 31 usable + the null block
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


@pytest.fixture(scope="module", autouse=True)
def vllm_cuda_env(tmp_path_factory):
    """Offline, in-process engine, V1 runner; no ``VLLM_TARGET_DEVICE=cpu``."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HUB_OFFLINE", "1")
        mp.setenv("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
        mp.setenv("VLLM_CACHE_ROOT", str(tmp_path_factory.mktemp("vllm_cache")))
        mp.delenv("VLLM_TARGET_DEVICE", raising=False)
        # Before the first engine (plain_llm): vLLM then caches every VLLM_*
        # variable, and our CUDA runner needs the V1 runner.
        mp.setenv("VLLM_USE_V2_MODEL_RUNNER", "0")
        yield


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    """Tiny LLaDA, head_dim 32, seed 0 (the CPU adapter tests' checkpoint)."""
    return str(
        write_tiny_checkpoint(tmp_path_factory.mktemp("tiny"), seed=0, head_dim=32)
    )


def _tracing_scheduler_cls():
    """``MaskKVDiffusionScheduler`` recording free blocks and freed counts."""
    from maskkv_vllm.vllm_adapter.scheduler import MaskKVDiffusionScheduler

    class TracingScheduler(MaskKVDiffusionScheduler):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.free_after_step: list[int] = []
            self.freed: dict[str, int] = {}

        def update_from_output(self, scheduler_output, model_runner_output):
            out = super().update_from_output(scheduler_output, model_runner_output)
            pool = self.kv_cache_manager.block_pool
            self.free_after_step.append(pool.get_num_free_blocks())
            return out

        def free_dead_prompt_blocks(self, req_id, kept_slots):
            freed = super().free_dead_prompt_blocks(req_id, kept_slots)
            self.freed[req_id] = freed
            return freed

    return TracingScheduler


@pytest.fixture(scope="module")
def plain_llm(ckpt, vllm_cuda_env):
    """Our model in vLLM's stock CUDA worker (phase 1: no scheduler/worker)."""
    from vllm import LLM

    from maskkv_vllm.vllm_adapter.plugin import register

    register()
    return LLM(model=ckpt, max_logprobs=-1, **ENGINE_ARGS)


@pytest.fixture(scope="module")
def llm(ckpt, vllm_cuda_env):
    """The denoising engine: our scheduler and worker, a 32-block pool."""
    from maskkv_vllm.vllm_adapter.api import make_llm

    return make_llm(ckpt, scheduler_cls=_tracing_scheduler_cls(), **ENGINE_ARGS)


@pytest.fixture
def scheduler(llm):
    sched = llm.llm_engine.engine_core.engine_core.scheduler
    sched.free_after_step.clear()
    sched.freed.clear()
    return sched


@pytest.fixture(scope="module")
def embedded(ckpt):
    """The reference engine on CUDA; policy and budget come with each request."""
    return EmbeddedLLM(ckpt, kv_policy="full", device="cuda")


def _reference(embedded, prompts, params):
    return [
        (o.token_ids, o.text, o.finish_reason)
        for o in embedded.generate(prompts, params, use_tqdm=False)
    ]


def _ours(llm, prompts, params):
    from maskkv_vllm.vllm_adapter.api import generate

    return [
        (o.token_ids, o.text, o.finish_reason) for o in generate(llm, prompts, params)
    ]


def test_prefill_logprobs_match_our_model_on_cuda(plain_llm, ckpt):
    from vllm import SamplingParams as VllmParams

    assert plain_llm.apply_model(lambda m: type(m).__name__) == ["LLaDAForDiffusionLM"]
    params = VllmParams(
        max_tokens=1, temperature=0.0, prompt_logprobs=-1, detokenize=False
    )
    (out,) = plain_llm.generate([{"prompt_token_ids": CANVAS_IDS}], params)
    got = torch.full((len(CANVAS_IDS) - 1, VOCAB), float("nan"))
    for i, per_token in enumerate(out.prompt_logprobs[1:]):
        for token_id, logprob in per_token.items():
            got[i, token_id] = logprob.logprob
    model = load_model(ckpt, device="cuda")
    with torch.no_grad():
        ids = torch.tensor([CANVAS_IDS], device="cuda")
        hidden = model(ids, torch.arange(len(CANVAS_IDS), device="cuda")[None])
        ref = torch.log_softmax(model.logits(hidden)[0].float(), dim=-1).cpu()
    torch.testing.assert_close(got, ref[:-1], atol=1e-3, rtol=0)
    assert out.outputs[0].token_ids == [int(ref[-1].argmax())]


def _cuda_probe(worker):
    """Classes in the worker, and a KV write (backend op) / read (our view) trip."""
    from maskkv_vllm.vllm_adapter.kv_layout import write_slots

    runner = worker.model_runner
    layer = runner.get_model().blocks[1].attn
    layout = runner.make_cache_layout(layer)
    ids = layout.kernel_block_ids(torch.tensor([5, 2, 9]))
    heads, d = layer.kv_cache.shape[1], layout.head_dim
    gen = torch.Generator().manual_seed(0)
    k = torch.randn(70, heads, d, generator=gen).to(layer.kv_cache)
    v = torch.randn(70, heads, d, generator=gen).to(layer.kv_cache)
    write_slots(layer, k, v, ids, torch.arange(70))
    rk, rv = layout.read(layer.kv_cache, ids, 70)  # (H, 70, d)
    return (
        type(worker).__name__,
        type(runner).__name__,
        torch.equal(rk, k.transpose(0, 1)),
        torch.equal(rv, v.transpose(0, 1)),
    )


def test_cuda_worker_runner_and_kv_layout_round_trip(llm):
    assert llm.collective_rpc(_cuda_probe) == [
        ("MaskKVGPUWorker", "MaskKVGPUModelRunner", True, True)
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
    ("policy", "budget", "kept_slots"),
    [("snapkv", 64, 64), ("maskkv", 48, None), ("maskkv", 32, None)],
)
def test_eviction_matches_the_embedded_engine_and_frees_blocks(
    llm, embedded, scheduler, policy, budget, kept_slots
):
    params = SamplingParams(
        gen_length=32, block_length=16, steps=16, kv_policy=policy, kv_budget=budget
    )
    ref = _reference(embedded, [LONG], params)
    assert _ours(llm, [LONG], params) == ref
    # M + L = 232 slots = 8 blocks; after step 0 the blocks wholly inside
    # [K_max, 200) go back (K_max = 64 -> blocks 2..5).
    ((_, freed),) = scheduler.freed.items()
    if kept_slots is not None:
        assert freed == 200 // BLOCK - -(-kept_slots // BLOCK) == 4
    assert freed >= 1
    frees = scheduler.free_after_step
    assert frees[0] == NUM_BLOCKS - 1 - 8 + freed  # rose right after step 0
    assert set(frees[1:-1]) == {frees[0]}
    assert frees[-1] == NUM_BLOCKS - 1


def test_budget_above_the_prompt_frees_nothing_and_equals_full(llm, scheduler):
    full = SamplingParams(gen_length=32, block_length=16, steps=16)
    evicting = SamplingParams(
        gen_length=32, block_length=16, steps=16, kv_policy="snapkv", kv_budget=300
    )
    assert _ours(llm, [LONG], evicting) == _ours(llm, [LONG], full)
    assert list(scheduler.freed.values()) == [0]
