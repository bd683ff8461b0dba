"""One step's candidates and confidences from hidden states, in bounded memory.

Both engines call ``propose`` once per sequence and step. The LM head runs only
on the current block's still-masked slots, ``LOGITS_CHUNK_ROWS`` slots at a
time, and each chunk's logits are reduced at once to what the step needs (a
candidate and its confidence per slot), so a step's extra memory is that of one
chunk whatever the batch: about ``chunk_bytes(V)`` (see ``docs/vllm_notes.md``),
not rows x V x 12 B for the whole batch's blocks (16,384 rows x 126,464 vocab
~ 25 GB on LLaDA-8B with ``block_length = gen_length``).

The random stream is the one the whole-block computation drew: Gumbel noise
for every slot of the block in slot order (masked or not; CPU draws are
sequential, so drawing by chunk gives the same numbers), then the ``random``
confidences.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from maskkv_vllm.sampler.dream_rules import confidence_rule, dream_confidences
from maskkv_vllm.sampler.remasking import gumbel_candidates, random_confidences
from maskkv_vllm.sampler.top_filters import top_filter_mask

LOGITS_CHUNK_ROWS = 64
"""Slots whose full-vocabulary logits exist at once (a step's memory bound)."""

CHUNK_BYTES_PER_ROW_AND_TOKEN = 30
"""Peak bytes per (slot, vocabulary entry) of one chunk: the projection in the
model's dtype (<= 4) and its fp32 logits (4, or 0 when the model is fp32), the
float64 copy for Gumbel or softmax (8), the noise (8) and the float64 softmax
(8); ``chunk_bytes`` adds 2 of slack for the model's cast of the fp32 copy."""


def chunk_bytes(vocab_size: int, chunk_rows: int = LOGITS_CHUNK_ROWS) -> int:
    """Upper bound of the extra bytes one step's sampling holds at once."""
    return chunk_rows * vocab_size * (CHUNK_BYTES_PER_ROW_AND_TOKEN + 2)


@dataclass(frozen=True)
class ChunkRule:
    """How a chunk of logits becomes candidates and confidences (a request's).

    Attributes:
        temperature: 0 for the argmax, else Gumbel-max at this temperature.
        remasking: "low_confidence", "random" (confidences drawn after all
            chunks, from the same generator) or one of Dream's ``DREAM_RULES``
            ("origin" needs no confidence).
        mask_token_id: never a candidate (a committed ``[MASK]`` would leave its
            slot masked in a streamed block).
        eos_token_id: forbidden when ``no_eos``.
        no_eos: LLaDA's ``logits_eos_inf``.
        top_p, top_k: filters of the candidate's distribution (``top_filters``;
            1 and 0 are off), computed on the logits divided by the temperature.
    """

    temperature: float
    remasking: str
    mask_token_id: int
    eos_token_id: int | None
    no_eos: bool
    top_p: float = 1.0
    top_k: int = 0

    @property
    def filters(self) -> bool:
        """Whether top-p or top-k removes anything."""
        return self.top_p < 1 or self.top_k > 0


def block_hidden(
    hidden: torch.Tensor, canvas_start: int, seq, shift: int = 0
) -> torch.Tensor:
    """(block_length, d_model) hidden states that predict ``seq``'s current block.

    Args:
        hidden: (T, d_model) one row's hidden states.
        canvas_start: index of canvas slot 0 in ``hidden``.
        shift: 1 for a model that reads slot i from output i - 1 (Dream's
            ``shifted_logits``), else 0.
    """
    first = canvas_start + seq.block_start - shift
    return hidden[first : first + seq.params.block_length]


def propose(
    seq, branch_hidden: list[torch.Tensor], project, chunk_rows: int = LOGITS_CHUNK_ROWS
) -> tuple[torch.Tensor, torch.Tensor]:
    """Candidates and confidences of ``seq``'s current block.

    Args:
        seq: its ``DiffusionSequence`` (canvas, params, generator, CFG).
        branch_hidden: per branch (1, or 2 with CFG), (block_length, d_model).
        project: hidden (N, d_model) -> logits (N, V).
        chunk_rows: slots projected at once.

    Returns:
        (block_length,) candidate ids (the ``[MASK]`` id where a slot is already
        committed) and (block_length,) float64 confidences (-inf there).
    """
    p = seq.params
    rule = ChunkRule(
        p.temperature, p.remasking, seq.mask_token_id, seq.eos_token_id,
        p.logits_eos_inf, p.top_p, p.top_k,
    )  # fmt: skip
    blk = seq.canvas[seq.block_start : seq.block_start + p.block_length]
    masked = blk == seq.mask_token_id
    cand = torch.full_like(blk, seq.mask_token_id)
    conf = torch.full(blk.shape, -torch.inf, dtype=torch.float64, device=blk.device)
    vocab = None
    for first in range(0, p.block_length, chunk_rows):
        last = min(first + chunk_rows, p.block_length)
        rows = masked[first:last].nonzero().squeeze(-1)
        if rows.numel() == 0:
            if rule.temperature > 0:  # the stream draws for committed slots too
                vocab = vocab or _vocab_size(project, branch_hidden[0])
                _draw(last - first, vocab, blk.device, seq.generator, rows)
            continue
        logits = seq.combine_logits([project(h[first + rows]) for h in branch_hidden])
        vocab = logits.shape[-1]
        uniform = None
        if rule.temperature > 0:
            uniform = _draw(last - first, vocab, blk.device, seq.generator, rows)
        cand[first + rows], conf[first + rows] = propose_chunk(logits, rule, uniform)
    if rule.remasking == "random":
        drawn = random_confidences(p.block_length, blk.device, seq.generator)
        conf = torch.where(masked, drawn, conf)
    return cand, conf


def _vocab_size(project, hidden: torch.Tensor) -> int:
    """V, from projecting one row (only for a fully committed first chunk)."""
    return int(project(hidden[:1]).shape[-1])


def _draw(n: int, vocab: int, device, generator, rows: torch.Tensor) -> torch.Tensor:
    """Uniform draws of ``n`` slots in slot order, kept for ``rows`` only."""
    u = torch.rand((n, vocab), dtype=torch.float64, device=device, generator=generator)
    return u if rows.numel() == n else u[rows]


def propose_chunk(
    logits: torch.Tensor, rule: ChunkRule, uniform: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Candidates and confidences of N slots from their logits.

    Args:
        logits: (N, V) fp32, edited in place (EOS and ``[MASK]`` columns).
        uniform: (N, V) float64 draws for the Gumbel noise (temperature > 0),
            consumed.

    Returns:
        (N,) candidates, (N,) float64 confidences ("low_confidence": softmax
        probability of the candidate under the logits with EOS forbidden when
        ``no_eos``, as the official code; "random": -inf, drawn later).
    """
    if rule.no_eos and rule.eos_token_id is not None:
        logits[:, rule.eos_token_id] = -torch.inf
    probs = None
    if rule.remasking == "low_confidence":
        probs = torch.softmax(logits.to(torch.float64), dim=-1)
    logits[:, rule.mask_token_id] = -torch.inf
    dream = confidence_rule(rule.remasking)
    scaled = _filtered(logits, rule) if dream or rule.filters else None
    cand = gumbel_candidates(logits, rule.temperature, uniform)
    if dream:
        # Dream's: the filtered distribution at the temperature, over the
        # tokens a slot can take ([MASK] excluded), as the candidate's.
        conf = dream_confidences(torch.softmax(scaled, dim=-1), cand, dream)
        return cand, conf.to(torch.float64)
    if probs is None:
        return cand, torch.full(
            cand.shape, -torch.inf, dtype=torch.float64, device=cand.device
        )
    return cand, probs.gather(-1, cand[:, None]).squeeze(-1)


def _filtered(logits: torch.Tensor, rule: ChunkRule) -> torch.Tensor:
    """Apply top-p/top-k to ``logits`` (N, V) in place; return them divided by
    the temperature (as they are at temperature 0: Dream's softmax then)."""
    scaled = logits / rule.temperature if rule.temperature > 0 else logits
    removed = top_filter_mask(scaled, rule.top_p, rule.top_k)
    if removed is None:
        return scaled
    logits.masked_fill_(removed, -torch.inf)
    return scaled.masked_fill(removed, -torch.inf) if rule.temperature > 0 else logits
