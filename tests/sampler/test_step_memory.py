"""A step's sampling memory is one chunk of logits, whatever the block (issue 24).

Peak bytes are read from torch's CPU profiler (the ``peak_bytes`` fixture,
``tests/conftest.py``). The projection is
a plain fp32 linear map (d = 16, V = 4096); the bound is
``step_proposal.chunk_bytes(V)``, the formula in ``docs/vllm_notes.md``.
"""

from __future__ import annotations

import pytest
import torch

from maskkv_vllm.sampler.sequence import DiffusionSequence
from maskkv_vllm.sampler.step_proposal import (
    LOGITS_CHUNK_ROWS,
    chunk_bytes,
    propose,
)
from maskkv_vllm.sampling_params import SamplingParams

D, V, MASK, EOS = 16, 4096, 4095, 4094
HEAD = torch.randn(V, D, generator=torch.Generator().manual_seed(0))


def project(h: torch.Tensor) -> torch.Tensor:
    return h @ HEAD.T


def _sequence(block: int, **kwargs) -> tuple[DiffusionSequence, torch.Tensor]:
    params = SamplingParams(
        gen_length=block, block_length=block, steps=block, seed=1, **kwargs
    )
    seq = DiffusionSequence(0, 0, [1, 2], params, MASK, EOS, torch.device("cpu"))
    hidden = torch.randn(block, D, generator=torch.Generator().manual_seed(2))
    return seq, hidden


SETTINGS = [
    {},
    {"temperature": 1.0},
    {"temperature": 0.7, "logits_eos_inf": True},
    {"remasking": "random", "temperature": 1.0},
]


@pytest.mark.parametrize("kwargs", SETTINGS, ids=["greedy", "t1", "t07-noeos", "rand"])
def test_a_step_holds_one_chunk_of_logits_whatever_the_block(kwargs, peak_bytes):
    small, h_small = _sequence(LOGITS_CHUNK_ROWS, **kwargs)
    large, h_large = _sequence(8 * LOGITS_CHUNK_ROWS, **kwargs)
    peak_small = peak_bytes(lambda: propose(small, [h_small], project))
    peak_large = peak_bytes(lambda: propose(large, [h_large], project))
    assert peak_large <= chunk_bytes(V)
    # Eight times the slots, the same memory (the outputs are O(block)).
    assert peak_large <= peak_small + 8 * LOGITS_CHUNK_ROWS * 64
    # The whole block's logits at once (what a step held before): ~8 x more.
    whole, h_whole = _sequence(8 * LOGITS_CHUNK_ROWS, **kwargs)
    block = 8 * LOGITS_CHUNK_ROWS
    assert 4 * peak_large < peak_bytes(
        lambda: propose(whole, [h_whole], project, chunk_rows=block)
    )


@pytest.mark.parametrize("kwargs", SETTINGS, ids=["greedy", "t1", "t07-noeos", "rand"])
def test_chunking_changes_no_token_and_no_confidence(kwargs):
    block = 3 * LOGITS_CHUNK_ROWS - 5
    one, hidden = _sequence(block, **kwargs)
    many, _ = _sequence(block, **kwargs)
    # Slots already committed are skipped but still draw their noise.
    for seq in (one, many):
        seq.canvas[5:9] = 7
        seq.canvas[LOGITS_CHUNK_ROWS : 2 * LOGITS_CHUNK_ROWS] = 7
    cand_one, conf_one = propose(one, [hidden], project, chunk_rows=block)
    cand_many, conf_many = propose(many, [hidden], project, chunk_rows=7)
    assert torch.equal(cand_one, cand_many)
    # The LM head on 7 rows vs all: BLAS may round differently, by ulps.
    torch.testing.assert_close(conf_one, conf_many, rtol=1e-5, atol=0)
    committed = one.canvas != MASK
    assert (cand_one[committed] == MASK).all()
    assert torch.isinf(conf_one[committed]).all()
    assert torch.equal(one.generator.get_state(), many.generator.get_state())


def test_proposals_equal_the_whole_block_computation():
    # The reference: the previous whole-block code path, written out.
    seq, hidden = _sequence(2 * LOGITS_CHUNK_ROWS, temperature=1.0)
    ref_gen = torch.Generator().manual_seed(1)
    logits = project(hidden)
    probs = torch.softmax(logits.double(), dim=-1)
    choosable = logits.clone()
    choosable[:, MASK] = -torch.inf
    u = torch.rand(logits.shape, dtype=torch.float64, generator=ref_gen)
    want = (choosable.double().exp() / (-torch.log(u))).argmax(dim=-1)
    cand, conf = propose(seq, [hidden], project)
    assert torch.equal(cand, want)
    assert torch.equal(conf, probs.gather(-1, want[:, None]).squeeze(-1))
