"""``MaskKVDiffusionScheduler``: keeps a LLaDA request on its canvas until done.

- ``add_request``: validates the request's MaskKV params (``params.py``), appends
  the L ``[MASK]`` canvas slots to its prompt (so step 0, the prefill, is one
  non-causal forward over prompt + canvas and the blocks for M + L slots are
  allocated once) and sets ``max_tokens = L``.
- ``update_from_output``: after vLLM's bookkeeping, rewinds every unfinished
  request's ``num_computed_tokens`` to M, so the next step recomputes the L
  canvas slots in place over the cached prompt KV; after a step-0 eviction it
  frees the whole blocks of the dead prompt range (``free_dead_prompt_blocks``).
- ``_update_request_with_output``: the runner reports a request's answer once,
  when its canvas is done; it is appended whole and the request finishes
  (stopped on a stop id, else length-capped).

Selected with ``--scheduler-cls maskkv_vllm.vllm_adapter.scheduler.
MaskKVDiffusionScheduler``. Synchronous only (vLLM disables async scheduling
for a non-``AsyncScheduler`` subclass).
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

from vllm.v1.core.sched.scheduler import Scheduler
from vllm.v1.request import Request, RequestStatus

from maskkv_vllm.vllm_adapter.diffusion_state import stop_token_ids
from maskkv_vllm.vllm_adapter.params import (
    CONFIG_KEY,
    FLAT_PREFIX,
    AdapterConfig,
    request_params,
)
from maskkv_vllm.vllm_adapter.plugin import require_vllm_version

logger = logging.getLogger(__name__)

SCHEDULER_CLS = "maskkv_vllm.vllm_adapter.scheduler.MaskKVDiffusionScheduler"
"""The qualified name vLLM's ``scheduler_cls`` takes."""


def dead_block_range(kept_slots: int, prompt_len: int, block_size: int) -> range:
    """Block indices wholly inside the dead prompt range ``[K_max, M)``.

    Example: M = 200, block size 32, K_max = 64 -> blocks 2..5.
    """
    return range(-(-kept_slots // block_size), prompt_len // block_size)


class MaskKVDiffusionScheduler(Scheduler):
    """vLLM's V1 scheduler driving LLaDA's denoising loop (see module docstring)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        require_vllm_version(type(self).__name__)
        super().__init__(*args, **kwargs)
        self.adapter_config = AdapterConfig.from_additional_config(
            self.vllm_config.additional_config
        )
        hf = self.vllm_config.model_config.hf_config
        self.mask_token_id: int = hf.mask_token_id
        self.eos_token_id: int | None = hf.eos_token_id
        self.prompt_lens: dict[str, int] = {}
        """req_id -> M (the prompt without its canvas)."""
        self.freed_blocks: dict[str, int] = {}
        """req_id -> blocks returned after eviction (kept until the request ends)."""

    def add_request(self, request: Request) -> None:
        if request.request_id not in self.requests:
            self._attach_canvas(request)
        super().add_request(request)

    def _attach_canvas(self, request: Request) -> None:
        sp = request.sampling_params
        params = request_params(sp.extra_args, sp.max_tokens, self.adapter_config)
        extra = {k: v for k, v in (sp.extra_args or {}).items()}
        extra = {k: v for k, v in extra.items() if not k.startswith(FLAT_PREFIX)}
        extra[CONFIG_KEY] = dataclasses.asdict(params)
        sp.extra_args = extra
        canvas = [self.mask_token_id] * params.gen_length
        self.prompt_lens[request.request_id] = request.num_prompt_tokens
        request.prompt_token_ids = list(request.prompt_token_ids) + canvas
        request._all_token_ids.extend(canvas)
        request.num_prompt_tokens += params.gen_length
        request.max_tokens = params.gen_length

    def update_from_output(
        self, scheduler_output: Any, model_runner_output: Any
    ) -> dict[int, Any]:
        kept = getattr(model_runner_output, "maskkv_kept_slots", None) or {}
        outputs = super().update_from_output(scheduler_output, model_runner_output)
        for req_id in scheduler_output.num_scheduled_tokens:
            request = self.requests.get(req_id)
            if request is None or request.is_finished():
                continue
            request.num_computed_tokens = self.prompt_lens[req_id]
            if req_id in kept and self.adapter_config.free_blocks:
                self.free_dead_prompt_blocks(req_id, kept[req_id])
        return outputs

    def free_dead_prompt_blocks(self, req_id: str, kept_slots: int) -> int:
        """Return the blocks of ``[K_max, M)`` to the pool; null_block in their place.

        Returns:
            The number of blocks freed.
        """
        pool = self.kv_cache_manager.block_pool
        before = pool.get_num_free_blocks()
        dead = dead_block_range(kept_slots, self.prompt_lens[req_id], self.block_size)
        for manager in self.kv_cache_manager.coordinator.single_type_managers:
            manager._remove_blocks_in_range(req_id, dead.start, dead.stop)
        freed = pool.get_num_free_blocks() - before
        self.freed_blocks[req_id] = freed
        logger.info(
            "maskkv: request %s keeps %s prompt slots of %s; freed %s blocks",
            req_id, kept_slots, self.prompt_lens[req_id], freed,
        )  # fmt: skip
        return freed

    def _update_request_with_output(
        self, request: Request, new_token_ids: list[int], is_stale: bool = False
    ) -> tuple[list[int], bool]:
        if request.request_id not in self.prompt_lens:
            return super()._update_request_with_output(request, new_token_ids, is_stale)
        for token in new_token_ids:
            request.append_output_token_ids(token)
        sp = request.sampling_params
        last = new_token_ids[-1]
        if last in stop_token_ids(sp, self.eos_token_id):
            request.status = RequestStatus.FINISHED_STOPPED
            if last != sp.eos_token_id:
                request.stop_reason = last
        else:
            request.status = RequestStatus.FINISHED_LENGTH_CAPPED
        return new_token_ids, True

    def _free_request(self, request: Request, delay_free_blocks: bool = False) -> Any:
        self.prompt_lens.pop(request.request_id, None)
        self.freed_blocks.pop(request.request_id, None)
        return super()._free_request(request, delay_free_blocks)
