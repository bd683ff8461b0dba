"""The runner's per-request denoising state and the stop ids both sides agree on."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from maskkv_vllm.eviction.evictor import Eviction
from maskkv_vllm.kv_cache.adaptive_canvas import FeatureSpan
from maskkv_vllm.kv_cache.canvas_cache import CanvasSpan, canvas_span
from maskkv_vllm.sampler.sequence import DiffusionSequence
from maskkv_vllm.sampler.stops import first_stop, stop_ids
from maskkv_vllm.vllm_adapter.request_pages import RequestPages


def stop_token_ids(sampling_params: Any, eos_token_id: int | None) -> tuple[int, ...]:
    """Ids that end an answer: the request's stop ids, its EOS and the model's EOS.

    Args:
        sampling_params: the vLLM ``SamplingParams`` of the request.
        eos_token_id: ``eos_token_id`` of the model's config.
    """
    return stop_ids(sampling_params.all_stop_token_ids, [eos_token_id])


@dataclass
class DiffusionState:
    """One request's denoising state inside the model runner.

    Attributes:
        seq: canvas, block pointer and random stream (our embedded engine's).
        eviction: the request's step-0 eviction, or None (full cache).
        pages: its head-pages inside its vLLM blocks (set before step 0).
        kept_lengths: per layer, kept prompt entries of every KV head of the
            layer, all tensor-parallel ranks' heads (after step 0).
        computed: vLLM's ``num_computed_tokens`` at the current step (0 at the
            prefill, the prompt length M while denoising; M - 1 for a shifted
            model, whose canvas step also forwards the prompt's last token).
        shift: 1 for a model that reads slot i from output i - 1 (Dream's
            ``shifted_logits``), else 0. A shifted model's canvas and block
            steps forward one more token first, the position before the span
            (a query only: its K/V is the cache's), whose output reads the
            span's first slot.
        group: the model's query heads per KV head (the adaptive canvas
            cache keeps that many output entries per canvas row and KV head).
        reported: see the field.
    """

    seq: DiffusionSequence
    eviction: Eviction | None = None
    pages: RequestPages | None = None
    kept_lengths: dict[int, list[int]] = field(default_factory=dict)
    computed: int = 0
    shift: int = 0
    group: int = 1
    reported: int = 0
    """Answer tokens already handed to the scheduler (whole committed blocks)."""

    @property
    def prompt_len(self) -> int:
        return self.seq.prompt_len

    @property
    def is_full_forward(self) -> bool:
        """Whether this step computes the prompt too (the prefill, step 0, or a
        boundary of "dual_refresh"). A shifted model's canvas step over a
        one-token prompt starts at 0 too, so the step count decides."""
        seq = self.seq
        return self.computed == 0 and (seq.num_steps == 0 or seq.prompt_refresh_due)

    @property
    def forward_kind(self) -> str:
        """ "full" (step 0: prompt + canvas), "canvas" (the canvas over the kept
        prompt KV), "block" (only the current diffusion block, over the kept
        prompt and cached canvas KV: ``canvas_cache="dual"`` inside a block) or
        "adaptive" (the canvas, each layer recomputing only some rows)."""
        if self.is_full_forward:
            return "full"
        if self.seq.params.canvas_cache == "adaptive":
            return "adaptive"
        return "block" if self.seq.in_block_step else "canvas"

    def canvas_span(self) -> CanvasSpan | FeatureSpan | None:
        """What this row caches after its prompt entries (``canvas_span``)."""
        return canvas_span(self.seq.params, self.seq.block_start, self.group)

    def next_step_tokens(self) -> int:
        """Tokens its next step forwards (what the scheduler schedules): the
        block inside a block of the dual canvas cache, prompt and canvas at a
        boundary of "dual_refresh", else the whole canvas."""
        p = self.seq.params
        if self.seq.prompt_refresh_due:
            return self.prompt_len + p.gen_length
        rows = p.block_length if self.seq.in_block_step else p.gen_length
        return rows + self.shift

    def query_only_tokens(self) -> int:
        """Leading tokens of this step that are queries only (their keys are
        not attended to, and not written to the canvas cache): the position
        before the span, for a shifted model's canvas and block steps."""
        return 0 if self.is_full_forward else self.shift

    def canvas_offset(self) -> int:
        """Offset of the canvas's first slot among this step's tokens (negative
        in a block step, whose tokens are the block alone)."""
        if self.forward_kind == "block":
            return self.shift - self.seq.block_start
        return self.prompt_len - self.computed

    def position_shift(self) -> int:
        """What to add to vLLM's positions of this step's tokens: a block step
        is scheduled as the canvas's last ``block_length`` (+ shift) slots, and
        its tokens are the block's, at ``M + block_start`` (- shift) onwards."""
        if self.forward_kind != "block":
            return 0
        p = self.seq.params
        return self.seq.block_start - (p.gen_length - p.block_length)

    def take_committed(self) -> list[int]:
        """Answer tokens committed since the last call: each finished block once,
        and at the end the rest up to and including the first stop id."""
        done = self.answer() if self.seq.is_finished else self._committed()
        new = done[self.reported :]
        self.reported = len(done)
        return new

    def _committed(self) -> list[int]:
        return self.seq.canvas[: self.seq.block_start].tolist()

    def answer(self) -> list[int]:
        """The committed canvas up to and including the first stop id."""
        ids = self.seq.canvas.tolist()
        cut = first_stop(ids, self.seq.stop_token_ids)
        # vLLM's own outputs end with their stop token (the embedded engine's not).
        return ids if cut is None else ids[: cut + 1]
