"""LLaDA's denoising steps inside vLLM's V1 model runner, for any device.

``DiffusionRunnerMixin`` goes in front of a vLLM runner class
(``CPUModelRunner`` in ``cpu_model_runner.py``, ``GPUModelRunner`` in
``gpu_model_runner.py``); the KV cache is read and written only by our attention
(``diffusion_attention``), so the mixin is the same on every device.

Per step, after vLLM's ``_update_states``: each request's current canvas is
written into the persistent batch (``token_ids_cpu[row, M:M+L]``) so the forward
sees it; the forward runs with our step attention installed (prefill of prompt +
canvas at step 0, whose kept prompt KV goes into the request's head-pages;
the L canvas slots afterwards, the scheduler having rewound
``num_computed_tokens`` to M); ``sample_tokens`` replaces vLLM's one-token
sampler with our reference sampler (``step_proposal.propose``: the LM head on
the current block's masked slots in fixed-size chunks, float64 Gumbel,
low-confidence / random remasking; ``DiffusionSequence.apply_step``: the
per-block transfer schedule). A request reports each block's tokens when the
block is committed (vLLM streams them), the last up to and including the first
stop id.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Any

import torch
from vllm.v1.outputs import ModelRunnerOutput

from maskkv_vllm.eviction.policy_set import PolicySet
from maskkv_vllm.kv_cache.paged_attention import Workspace
from maskkv_vllm.sampler.sequence import DiffusionSequence
from maskkv_vllm.sampler.step_proposal import (
    LOGITS_CHUNK_ROWS,
    ChunkRule,
    block_hidden,
    propose,
    propose_chunk,
)
from maskkv_vllm.vllm_adapter.diffusion_state import DiffusionState, stop_token_ids
from maskkv_vllm.vllm_adapter.params import AdapterConfig, request_params
from maskkv_vllm.vllm_adapter.request_pages import RequestPages, VllmPageStore
from maskkv_vllm.vllm_adapter.version import require_vllm_version
from maskkv_vllm.vllm_adapter.worker.diffusion_attention import (
    DiffusionAttention,
    RowPlan,
    SplitStep,
)


@dataclass
class MaskKVRunnerOutput(ModelRunnerOutput):
    """``ModelRunnerOutput`` plus what the scheduler needs to free blocks."""

    maskkv_kept_lengths: dict[str, dict[int, list[int]]] = field(default_factory=dict)
    """req_id -> layer -> kept prompt entries of every KV head, for the
    requests whose step 0 ran in this step (the scheduler sizes their blocks)."""
    maskkv_canvas_tokens: dict[str, int] = field(default_factory=dict)
    """req_id -> canvas entries each head keeps after its prompt's (the dual
    canvas cache), for the same requests (their blocks hold those too)."""
    maskkv_step_tokens: dict[str, int] = field(default_factory=dict)
    """req_id -> canvas tokens its next step forwards (the scheduler schedules
    that many: the whole canvas, or one diffusion block)."""


class DiffusionRunnerMixin:
    """Denoising on top of a vLLM V1 model runner (see module docstring).

    The class it is mixed into provides vLLM's runner state: ``input_batch``,
    ``requests``, ``execute_model_state``, ``kv_connector_output``, ``device``,
    ``get_model``, ``_update_states`` and ``sample_tokens``.
    """

    def __init__(self, vllm_config: Any, device: torch.device) -> None:
        require_vllm_version(type(self).__name__)
        super().__init__(vllm_config, device)
        self.adapter_config = AdapterConfig.from_additional_config(
            vllm_config.additional_config
        )
        hf = vllm_config.model_config.hf_config
        self.mask_token_id: int = hf.mask_token_id
        self.eos_token_id: int | None = hf.eos_token_id
        self.num_layers: int = hf.num_hidden_layers
        self.policies = PolicySet(self.adapter_config.maskkv, self.num_layers)
        self.diffusion: dict[str, DiffusionState] = {}
        self._uids = itertools.count()
        self._rows: list[tuple[str, int, int]] = []  # (req_id, start, n) this step
        self._store: VllmPageStore | None = None
        self._workspace = Workspace()

    # -- per-step state -----------------------------------------------------

    def _update_states(self, scheduler_output: Any) -> Any:
        for req_id in scheduler_output.finished_req_ids:
            self.diffusion.pop(req_id, None)
        fn = super()._update_states(scheduler_output)
        for new in scheduler_output.scheduled_new_reqs:
            self.diffusion[new.req_id] = self._new_state(
                new.req_id, new.sampling_params, new.prompt_token_ids
            )
        for req_id in scheduler_output.scheduled_cached_reqs.resumed_req_ids:
            # Preempted, so its blocks are gone: denoise again from the start
            # (same seed, same tokens; nothing was reported yet).
            req = self.requests[req_id]
            self.diffusion[req_id] = self._new_state(
                req_id, req.sampling_params, req.prompt_token_ids
            )
        self._rows = self._write_canvases(scheduler_output)
        self._install_plan()
        return fn

    def _new_state(
        self, req_id: str, sp: Any, prompt_token_ids: list[int]
    ) -> DiffusionState:
        params = request_params(sp.extra_args, sp.max_tokens, self.adapter_config)
        prompt = list(prompt_token_ids[: -params.gen_length])
        seq = DiffusionSequence(
            next(self._uids), req_id, prompt, params, self.mask_token_id,
            self.eos_token_id, self.device,
            stop_token_ids(sp, self.eos_token_id),
        )  # fmt: skip
        eviction = self.policies.eviction(
            params.kv_policy, params.kv_budget, seq.generator
        )
        config = self.get_model().config
        shifted = getattr(config, "shifted_logits", False)
        group = config.n_heads // config.n_kv_heads
        return DiffusionState(seq, eviction, shift=int(shifted), group=group)

    def _write_canvases(self, scheduler_output: Any) -> list[tuple[str, int, int]]:
        """Put each canvas into the batch; (req_id, first token, count) per row."""
        batch, rows, start = self.input_batch, [], 0
        for row, req_id in enumerate(batch.req_ids):
            n = scheduler_output.num_scheduled_tokens[req_id]
            st = self.diffusion[req_id]
            m = st.prompt_len
            canvas = st.seq.canvas.cpu().numpy()
            batch.token_ids_cpu[row, m : m + canvas.shape[0]] = canvas
            st.computed = int(batch.num_computed_tokens_cpu[row])
            if st.forward_kind == "block":  # scheduled as the canvas's last slots
                end, first = m + canvas.shape[0], m + st.seq.block_start - st.shift
                block = batch.token_ids_cpu[row, first : first + n].copy()
                batch.token_ids_cpu[row, end - n : end] = block
            rows.append((req_id, start, n))
            start += n
        return rows

    def _install_plan(self) -> None:
        model = self.get_model()
        if not self._rows:
            model.set_step_attention(None)
            return
        if self._store is None:
            self._store = VllmPageStore(
                model.kv_pool.kv_cache, model.num_local_kv_heads,
                self.cache_config.block_size, model.config.head_dim,
            )  # fmt: skip
        plans = []
        for req_id, start, n in self._rows:
            st = self.diffusion[req_id]
            if st.is_full_forward:
                st.pages = RequestPages(
                    list(self.requests[req_id].block_ids[0]), self.num_layers,
                    model.num_local_kv_heads, self.cache_config.block_size,
                    self.device,
                )  # fmt: skip
                st.kept_lengths = {}
            plans.append(RowPlan(st, start, n))
        if any(p.state.forward_kind == "adaptive" for p in plans):
            step = SplitStep(plans, self._store, self.num_layers, self._workspace)
        else:
            step = DiffusionAttention(
                plans, self._store, self.num_layers, None, self._workspace
            )
        model.set_step_attention(step)

    # -- sampling -----------------------------------------------------------

    def sample_tokens(self, grammar_output: Any) -> Any:
        state = self.execute_model_state
        if state is None or not self._rows:
            return super().sample_tokens(grammar_output)
        self.execute_model_state = None
        self.get_model().set_step_attention(None)
        with torch.inference_mode():
            sampled, kept = self._denoise(state.hidden_states)
        connector_output, self.kv_connector_output = self.kv_connector_output, None
        states = [(r, self.diffusion[r]) for r, _, _ in self._rows]
        return MaskKVRunnerOutput(
            req_ids=list(self.input_batch.req_ids),
            req_id_to_index=dict(self.input_batch.req_id_to_index),
            sampled_token_ids=sampled,
            kv_connector_output=connector_output,
            maskkv_kept_lengths=kept,
            maskkv_canvas_tokens={r: st.pages.canvas_tokens for r, st in states
                                  if r in kept},
            maskkv_step_tokens={r: st.next_step_tokens() for r, st in states},
        )  # fmt: skip

    def _dummy_sampler_run(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """The sampling of the worst step, where vLLM profiles its sampler.

        vLLM's profile run (and warm-up) ends with its sampler over one row per
        request; ours runs instead, so ``gpu_memory_utilization`` reserves what
        a real step takes: one full chunk of ``LOGITS_CHUNK_ROWS`` masked slots
        with Gumbel noise and softmax confidences (``step_proposal``; a step
        never holds more, whatever ``max_num_seqs`` and the block length).

        Args:
            hidden_states: (N, d_model) the dummy run's last hidden states.
        """
        model = self.get_model()
        rows = torch.rand(
            LOGITS_CHUNK_ROWS, hidden_states.shape[-1],
            dtype=hidden_states.dtype, device=hidden_states.device,
        )  # fmt: skip
        logits = model.compute_logits(rows)
        uniform = torch.rand(logits.shape, dtype=torch.float64, device=logits.device)
        rule = ChunkRule(1.0, "low_confidence", self.mask_token_id,
                         self.eos_token_id, True)  # fmt: skip
        candidates, _ = propose_chunk(logits, rule, uniform)
        return candidates

    def _denoise(self, hidden: torch.Tensor) -> tuple[list[list[int]], dict]:
        """One reference-sampler step per request.

        Args:
            hidden: (T, d_model) hidden states of every scheduled token.

        Returns:
            Per row the tokens committed in this step ([] while a block
            denoises), and
            req_id -> kept lengths for the rows whose step 0 ran in this step.
        """
        project = self.get_model().compute_logits
        sampled, kept = [], {}
        for req_id, start, _ in self._rows:
            st = self.diffusion[req_id]
            first_step, kind = st.is_full_forward, st.forward_kind
            rows = block_hidden(hidden, start + st.canvas_offset(), st.seq, st.shift)
            st.seq.apply_step(*propose(st.seq, [rows], project))
            st.seq.note_forward(kind)
            if first_step:
                kept[st.seq.request_id] = dict(st.kept_lengths)
            sampled.append(st.take_committed())
        return sampled, kept
