"""``MaskKVDiffusionScheduler``: keeps a LLaDA request on its canvas until done.

- ``add_request``: validates the request's MaskKV params (``params.py``), appends
  the L ``[MASK]`` canvas slots to its prompt (so step 0, the prefill, is one
  non-causal forward over prompt + canvas and the blocks for M + L slots are
  allocated once) and sets ``max_tokens = L``.
- admission by the compressed footprint: each request's blocks are its
  *reservation* in vLLM's block manager (``kv_spec.MaskKVBlockManager``), set
  in ``add_request`` to the upper bound of what its prompt keeps after step 0
  (``footprint.reserved_blocks``, the embedded engine's page arithmetic), so
  vLLM admits it when that bound fits, not its whole M + L.
- ``update_from_output``: after vLLM's bookkeeping, rewinds every unfinished
  request's ``num_computed_tokens`` to M, so the next step recomputes the L
  canvas slots over the cached prompt KV; after step 0 it shrinks the request
  to the blocks its kept head-pages fill (``release_unused_blocks``), which go
  back to vLLM's ``BlockPool`` at once.
- a preempted request gets its bound again and restarts from step 0.
- a request ``_attach_canvas`` refuses (params the front end could not judge: the
  engine's default policy with no budget anywhere, a reservation above the whole
  pool) never enters a queue: vLLM's engine core does not catch an exception from
  ``add_request``, which would take the engine down with every running request.
  It is finished at the next step with ``finish_reason`` "error" and the refusal
  in ``stop_reason`` (the OpenAI server answers 500), and logged with its reason.
- ``_update_request_with_output``: the runner reports each block's tokens when
  the block is committed; vLLM streams them, the request's token list stays at
  M + L until the last block, when the answer is appended whole and it finishes
  (stopped on a stop id, else length-capped).

Selected with ``--scheduler-cls maskkv_vllm.vllm_adapter.core.scheduler.
MaskKVDiffusionScheduler``. Synchronous only (vLLM disables async scheduling
for a non-``AsyncScheduler`` subclass).
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

from vllm.v1.core.sched.scheduler import Scheduler
from vllm.v1.engine import EngineCoreOutput, EngineCoreOutputs
from vllm.v1.request import Request, RequestStatus

from maskkv_vllm.eviction.policy_set import PolicySet
from maskkv_vllm.vllm_adapter.core.footprint import held_blocks, reserved_blocks
from maskkv_vllm.vllm_adapter.core.metrics import record_eviction
from maskkv_vllm.vllm_adapter.diffusion_state import stop_token_ids
from maskkv_vllm.vllm_adapter.kv_spec import MaskKVBlockManager, ensure_registered
from maskkv_vllm.vllm_adapter.params import (
    CONFIG_KEY,
    FLAT_PREFIX,
    AdapterConfig,
    check_engine_fit,
    request_params,
)
from maskkv_vllm.vllm_adapter.version import require_vllm_version

# Under "vllm." so that vLLM's log handler and level apply to our lines too.
logger = logging.getLogger(f"vllm.maskkv.{__name__.rsplit('.', 1)[-1]}")

SCHEDULER_CLS = "maskkv_vllm.vllm_adapter.core.scheduler.MaskKVDiffusionScheduler"
"""The qualified name vLLM's ``scheduler_cls`` takes."""


class MaskKVDiffusionScheduler(Scheduler):
    """vLLM's V1 scheduler driving LLaDA's denoising loop (see module docstring)."""

    def __init__(self, vllm_config: Any, *args: Any, **kwargs: Any) -> None:
        require_vllm_version(type(self).__name__)
        ensure_registered(vllm_config)  # before vLLM builds the block manager
        super().__init__(vllm_config, *args, **kwargs)
        # As vLLM does for its own diffusion models: a step appends no sampled
        # token, so no slot is held back and M + L may fill max_model_len.
        self.num_sampled_tokens_per_step = 0
        self.adapter_config = AdapterConfig.from_additional_config(
            self.vllm_config.additional_config
        )
        hf = self.vllm_config.model_config.hf_config
        self.mask_token_id: int = hf.mask_token_id
        self.eos_token_id: int | None = hf.eos_token_id
        self.num_layers: int = hf.num_hidden_layers
        self.num_kv_heads: int = hf.num_key_value_heads
        self.group: int = hf.num_attention_heads // self.num_kv_heads
        self.tp_size: int = self.vllm_config.parallel_config.tensor_parallel_size
        self.model_name: str = self.vllm_config.model_config.served_model_name
        self.policies = PolicySet(self.adapter_config.maskkv, self.num_layers)
        self.block_manager = self._pool_manager()
        self.prompt_lens: dict[str, int] = {}
        """req_id -> M (the prompt without its canvas)."""
        self.reserved: dict[str, int] = {}
        """req_id -> blocks its prompt may need after step 0 (the admission bound)."""
        self.freed_blocks: dict[str, int] = {}
        """req_id -> blocks returned after step 0 (kept until the request ends)."""
        self.reported: dict[str, list[int]] = {}
        """req_id -> answer tokens streamed so far (whole committed blocks)."""
        self.canvas_tokens: dict[str, int] = {}
        """req_id -> canvas entries each head keeps after its prompt's (dual)."""
        self.replay: dict[str, int] = {}
        """req_id -> streamed tokens a preempted request will commit again."""
        self.refused: dict[str, Request] = {}
        """req_id -> a refused request, finished with an error at the next step."""

    def _pool_manager(self) -> MaskKVBlockManager:
        managers = self.kv_cache_manager.coordinator.single_type_managers
        if len(managers) != 1 or not isinstance(managers[0], MaskKVBlockManager):
            raise RuntimeError(
                "MaskKVDiffusionScheduler needs the LLaDA page pool as the only KV "
                f"cache group; got managers {[type(m).__name__ for m in managers]}"
            )
        return managers[0]

    def add_request(self, request: Request) -> None:
        if request.request_id not in self.requests:
            try:
                self._attach_canvas(request)
            except ValueError as e:
                self._refuse(request, str(e))
                return
        super().add_request(request)

    def _refuse(self, request: Request, reason: str) -> None:
        logger.warning("maskkv: refused request %s: %s", request.request_id, reason)
        request.status = RequestStatus.FINISHED_ERROR
        request.stop_reason = reason
        self.refused[request.request_id] = request

    def get_num_unfinished_requests(self) -> int:
        # A refused request keeps the engine stepping until its error is sent.
        return super().get_num_unfinished_requests() + len(self.refused)

    def _send_refusals(self, outputs: dict[int, EngineCoreOutputs]) -> None:
        for req_id, request in self.refused.items():
            eco = outputs.setdefault(request.client_index, EngineCoreOutputs())
            eco.outputs.append(
                EngineCoreOutput(
                    request_id=req_id,
                    new_token_ids=[],
                    finish_reason=request.get_finished_reason(),
                    stop_reason=request.stop_reason,
                    trace_headers=request.trace_headers,
                )
            )
            if self.finished_req_ids_dict is not None:
                finished = set(eco.finished_requests or ())
                eco.finished_requests = finished | {req_id}
        self.refused.clear()

    def _attach_canvas(self, request: Request) -> None:
        sp = request.sampling_params
        params = request_params(sp.extra_args, sp.max_tokens, self.adapter_config)
        extra = {k: v for k, v in (sp.extra_args or {}).items()}
        extra = {k: v for k, v in extra.items() if not k.startswith(FLAT_PREFIX)}
        extra[CONFIG_KEY] = dataclasses.asdict(params)
        sp.extra_args = extra
        canvas = [self.mask_token_id] * params.gen_length
        m = request.num_prompt_tokens
        # The front end refuses it first (validation); here for a request that
        # bypassed it, as the pool check below.
        check_engine_fit(params, self.tp_size)
        # free_blocks off (a baseline): every request holds its whole prompt.
        name = params.kv_policy if self.adapter_config.free_blocks else "full"
        blocks = reserved_blocks(
            self.policies.get(name), params, m, self.num_layers,
            self.num_kv_heads, self.block_size, self.tp_size, self.group,
        )  # fmt: skip
        usable = self.kv_cache_manager.block_pool.num_gpu_blocks - 1
        if blocks > usable:
            raise ValueError(
                f"a {m}-token prompt needs {blocks} KV blocks (kv_policy="
                f"{params.kv_policy!r}, kv_budget={params.kv_budget}) but the pool "
                f"holds {usable}: raise the KV cache size or lower the budget"
            )
        self.reserved[request.request_id] = blocks
        self.block_manager.reserve(request.request_id, blocks)
        self.prompt_lens[request.request_id] = m
        request.prompt_token_ids = list(request.prompt_token_ids) + canvas
        request._all_token_ids.extend(canvas)
        request.num_prompt_tokens += params.gen_length
        request.max_tokens = params.gen_length

    def update_from_output(
        self, scheduler_output: Any, model_runner_output: Any
    ) -> dict[int, Any]:
        kept = getattr(model_runner_output, "maskkv_kept_lengths", None) or {}
        canvas = getattr(model_runner_output, "maskkv_canvas_tokens", None) or {}
        rows = getattr(model_runner_output, "maskkv_step_tokens", None) or {}
        outputs = super().update_from_output(scheduler_output, model_runner_output)
        self._send_refusals(outputs)
        for req_id in scheduler_output.num_scheduled_tokens:
            request = self.requests.get(req_id)
            if request is None or request.is_finished():
                continue
            # The next step schedules the request's last ``rows`` slots: the
            # canvas, or as many as one diffusion block (the runner puts the
            # block's tokens there).
            n = request.num_tokens - self.prompt_lens[req_id]
            request.num_computed_tokens = request.num_tokens - rows.get(req_id, n)
            if req_id in canvas:
                self.canvas_tokens[req_id] = canvas[req_id]
            if req_id in kept and self.adapter_config.free_blocks:
                self.release_unused_blocks(req_id, kept[req_id])
        return outputs

    def release_unused_blocks(
        self, req_id: str, kept_lengths: dict[int, list[int]]
    ) -> int:
        """Shrink a request to the blocks its kept head-pages fill; free the rest
        (each head also holds the request's ``canvas_tokens``, dual cache).

        Args:
            kept_lengths: layer -> kept prompt entries of every KV head.

        Returns:
            The number of blocks returned to vLLM's pool.
        """
        c = self.canvas_tokens.get(req_id, 0)
        held_lengths = {
            layer: [n + c for n in heads] for layer, heads in kept_lengths.items()
        }
        need = held_blocks(held_lengths, self.block_size, self.tp_size)
        held = self.block_manager.num_held(req_id)
        if need > held:
            raise RuntimeError(
                f"request {req_id} kept {need} blocks of head-pages but holds {held}"
            )
        freed = self.block_manager.shrink(req_id, need)
        if req_id in self.freed_blocks:
            # A later step 0 of the same run ("dual_refresh" recomputes the prompt
            # at each block boundary): its eviction was counted already.
            self.freed_blocks[req_id] += freed
            return freed
        self.freed_blocks[req_id] = freed
        kept_total = sum(map(sum, kept_lengths.values()))
        all_entries = self.prompt_lens[req_id] * sum(map(len, kept_lengths.values()))
        record_eviction(self.model_name, freed, kept_total, all_entries)
        logger.info(
            "maskkv: request %s keeps %s prompt KV entries (M = %s) in %s blocks; "
            "freed %s of %s",
            req_id, kept_total, self.prompt_lens[req_id], need, freed, held,
        )  # fmt: skip
        return freed

    def _preempt_request(self, request: Request, *args: Any, **kwargs: Any) -> None:
        super()._preempt_request(request, *args, **kwargs)
        # Its blocks are gone; it restarts at step 0 with the admission bound.
        if request.request_id in self.reserved:
            self.block_manager.reserve(
                request.request_id, self.reserved[request.request_id]
            )
        self.freed_blocks.pop(request.request_id, None)
        # It denoises again from the same seed, so it commits the same blocks:
        # those already streamed are not sent twice.
        self.replay[request.request_id] = len(self.reported.get(request.request_id, []))

    def _update_request_with_output(
        self, request: Request, new_token_ids: list[int], is_stale: bool = False
    ) -> tuple[list[int], bool]:
        if request.request_id not in self.prompt_lens:
            return super()._update_request_with_output(request, new_token_ids, is_stale)
        rid = request.request_id
        skip = min(self.replay.get(rid, 0), len(new_token_ids))
        if skip:
            self.replay[rid] -= skip
            new_token_ids = new_token_ids[skip:]
            if not new_token_ids:
                return [], False
        sent = self.reported.setdefault(rid, [])
        sent += new_token_ids
        sp = request.sampling_params
        stops = stop_token_ids(sp, self.eos_token_id)
        last = new_token_ids[-1]
        if last not in stops and len(sent) < request.max_tokens:
            # A committed block, streamed; the request's own token list stays
            # at M + L so the next step still schedules exactly the canvas.
            return new_token_ids, False
        for token in sent:
            request.append_output_token_ids(token)
        if last in stops:
            request.status = RequestStatus.FINISHED_STOPPED
            if last != sp.eos_token_id:
                request.stop_reason = last
        else:
            request.status = RequestStatus.FINISHED_LENGTH_CAPPED
        return new_token_ids, True

    def _free_request(self, request: Request, delay_free_blocks: bool = False) -> Any:
        self.prompt_lens.pop(request.request_id, None)
        self.freed_blocks.pop(request.request_id, None)
        self.canvas_tokens.pop(request.request_id, None)
        self.reserved.pop(request.request_id, None)
        self.reported.pop(request.request_id, None)
        self.replay.pop(request.request_id, None)
        out = super()._free_request(request, delay_free_blocks)
        self.block_manager.release(request.request_id)
        return out
