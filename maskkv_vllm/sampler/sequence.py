"""One request's denoising state: its canvas, block pointer and random stream."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from maskkv_vllm.sampler.dream_rules import (
    DREAM_RULES,
    FIRST_SLOT,
    dream_transfer_count,
    origin_transfer,
    ranked_transfer,
)
from maskkv_vllm.sampler.remasking import select_transfer
from maskkv_vllm.sampler.schedule import num_transfer_tokens
from maskkv_vllm.sampling_params import SamplingParams


@dataclass
class Branch:
    """One forward row of a sequence: the conditional prompt, or CFG's masked copy."""

    prompt_ids: torch.Tensor
    """(M,) prompt ids as this branch sees them."""
    cache_key: tuple[int, int]
    """(sequence uid, branch index): this row's entry in the prompt cache."""


class DiffusionSequence:
    """State of one request across denoising steps.

    Args:
        uid: unique id of this sequence (keys its prompt-cache rows).
        request_id: caller's id.
        prompt_ids: prompt token ids (M,).
        params: validated sampling parameters.
        mask_token_id: id of ``[MASK]``.
        eos_token_id: id forbidden when ``params.logits_eos_inf``.
        device: where the canvas and the random stream live.
        stop_token_ids: ids that end the answer; once a completed block holds one,
            later blocks cannot change the output (committed tokens are never
            remasked and the answer is cut at the first stop), so the sequence
            finishes there.
    """

    def __init__(
        self,
        uid: int,
        request_id: int,
        prompt_ids: list[int],
        params: SamplingParams,
        mask_token_id: int,
        eos_token_id: int,
        device: torch.device,
        stop_token_ids: tuple[int, ...] = (),
    ) -> None:
        self.uid = uid
        self.request_id = request_id
        self.prompt_token_ids = list(prompt_ids)
        self.params = params
        self.mask_token_id = mask_token_id
        self.eos_token_id = eos_token_id
        self.stop_token_ids = stop_token_ids
        prompt = torch.tensor(prompt_ids, dtype=torch.long, device=device)
        self.branches = [Branch(prompt, (uid, 0))]
        if params.cfg_scale > 0:
            masked = torch.full_like(prompt, mask_token_id)
            self.branches.append(Branch(masked, (uid, 1)))
        self.canvas = torch.full(
            (params.gen_length,), mask_token_id, dtype=torch.long, device=device
        )
        self.generator = torch.Generator(device=device).manual_seed(params.seed)
        self.schedule = num_transfer_tokens(params.block_length, params.steps_per_block)
        self.block = 0
        self.step_in_block = 0
        self.num_steps = 0
        self.peak_prompt_kv_bytes = 0
        self.prompt_kv_entries = 0
        """Prompt K/V entries the rows kept at their latest full forward."""
        self.prompt_kv_pages = 0
        """Pages those entries took (read before a finished row frees them)."""
        self.pinned: list[int] = []
        self.canvas_age: int | None = None
        """Canvas steps since the adaptive canvas cache was last refreshed (None:
        nothing cached yet, or a full forward took the region anew)."""

    def pin(self, token_ids: list[int]) -> None:
        """Force the first ``len(token_ids)`` canvas slots to these tokens as their
        blocks complete: a restarted (preempted) request keeps what a client was
        already sent, whatever a differently batched rerun would pick."""
        if len(token_ids) > self.params.gen_length:
            raise ValueError(
                f"{len(token_ids)} pinned tokens exceed gen_length "
                f"{self.params.gen_length}"
            )
        self.pinned = list(token_ids)

    @property
    def prompt_len(self) -> int:
        return len(self.prompt_token_ids)

    @property
    def is_finished(self) -> bool:
        return self.block >= self.params.num_diffusion_blocks

    @property
    def in_block_step(self) -> bool:
        """Whether the next step is inside a diffusion block of a row that caches
        its canvas: it forwards only the block's rows (``block_length``)."""
        return bool(self.params.canvas_cached) and self.step_in_block > 0

    @property
    def canvas_refresh_due(self) -> bool:
        """Whether the next step of an "adaptive" row recomputes every canvas row
        (its first canvas step, then every ``canvas_refresh_interval``)."""
        age = self.canvas_age
        return age is None or age >= self.params.canvas_refresh_interval

    @property
    def canvas_rows_recomputed(self) -> int:
        """Canvas rows each layer recomputes in the next "adaptive" step: all
        of them at a refresh, else ``params.canvas_selected``."""
        if self.canvas_refresh_due:
            return self.params.gen_length
        return self.params.canvas_selected

    def note_forward(self, kind: str) -> None:
        """Age the adaptive canvas cache after this step's forward of ``kind``
        ("adaptive" steps count; any other forward leaves nothing cached)."""
        if kind != "adaptive":
            self.canvas_age = None
        else:
            self.canvas_age = 1 if self.canvas_refresh_due else self.canvas_age + 1

    @property
    def prompt_refresh_due(self) -> bool:
        """Whether the next step is a block boundary that recomputes the prompt
        too (``canvas_cache="dual_refresh"``: a full forward, as step 0)."""
        return self.params.canvas_cache == "dual_refresh" and self.step_in_block == 0

    @property
    def block_start(self) -> int:
        """Canvas offset of the current block."""
        return self.block * self.params.block_length

    @property
    def cache_keys(self) -> list[tuple[int, int]]:
        return [b.cache_key for b in self.branches]

    def combine_logits(self, branch_logits: list[torch.Tensor]) -> torch.Tensor:
        """CFG: ``uncond + (s + 1) * (cond - uncond)``; (block, V) fp32."""
        if len(branch_logits) == 1:
            return branch_logits[0]
        cond, uncond = branch_logits
        return uncond + (self.params.cfg_scale + 1) * (cond - uncond)

    def apply_step(self, candidates: torch.Tensor, confidence: torch.Tensor) -> None:
        """Commit this step's tokens of the current block.

        Args:
            candidates: (block_length,) proposed ids of the block's slots.
            confidence: (block_length,) float64 confidences (``step_proposal``).
        """
        p = self.params
        blk = slice(self.block_start, self.block_start + p.block_length)
        masked = self.canvas[blk] == self.mask_token_id
        idx = self._transfer(confidence, masked)
        self.canvas[blk][idx] = candidates[idx]
        self.num_steps += 1
        self.step_in_block += 1
        self._maybe_next_block()

    def _transfer(self, confidence: torch.Tensor, masked: torch.Tensor) -> torch.Tensor:
        """Indices into the block to commit this step (see ``apply_step``)."""
        p, step = self.params, self.step_in_block
        if p.remasking == "origin":
            return origin_transfer(masked, step, p.steps_per_block, self.generator)
        if p.remasking == FIRST_SLOT and step == 0:
            return masked[:1].nonzero().squeeze(-1)
        if p.remasking in DREAM_RULES:
            k = dream_transfer_count(int(masked.sum()), step, p.steps_per_block)
            if p.threshold is None and k > 0:
                # Dream ranks over its whole sequence; Fast-dLLM's block
                # variant over the block's row.
                offset = self.prompt_len + self.block_start
                width = self.prompt_len + p.gen_length
                if p.remasking == FIRST_SLOT:
                    offset, width = 0, p.block_length
                return ranked_transfer(
                    confidence, masked, k, p.alg_temp, self.generator, offset, width
                )
        elif step < len(self.schedule):
            k = self.schedule[step]
        else:
            k = 0
        return select_transfer(confidence, masked, k, p.threshold)

    def _maybe_next_block(self) -> None:
        p = self.params
        blk = self.canvas[self.block_start : self.block_start + p.block_length]
        no_masks_left = not bool((blk == self.mask_token_id).any())
        steps_done = p.threshold is None and self.step_in_block >= p.steps_per_block
        if no_masks_left or steps_done:
            self._apply_pins()
            self.block += 1
            self.step_in_block = 0
            if self.stop_token_ids and bool(torch.isin(blk, self._stop_ids()).any()):
                self.block = p.num_diffusion_blocks

    def _apply_pins(self) -> None:
        start, end = self.block_start, self.block_start + self.params.block_length
        pinned = self.pinned[start:end]
        if pinned:
            self.canvas[start : start + len(pinned)] = torch.tensor(
                pinned, dtype=self.canvas.dtype, device=self.canvas.device
            )

    def _stop_ids(self) -> torch.Tensor:
        return torch.tensor(self.stop_token_ids, device=self.canvas.device)

    @property
    def num_committed_tokens(self) -> int:
        """Canvas slots of the completed blocks."""
        return (
            min(self.block, self.params.num_diffusion_blocks) * self.params.block_length
        )
