"""Commit order on a stub model whose logits per canvas slot are written by hand.

Vocabulary: tokens 0 and 1 are words, 2 is EOS/pad, 3 is [MASK]. Each slot's logits are
``[a, 0, 0, 0]`` or ``[0, a, 0, 0]``, so its candidate is token 0 or 1 and its
confidence is ``e^a / (e^a + 3)``:

    a = 1.0 -> 0.475    a = 1.5 -> 0.599    a = 2.0 -> 0.711    a = 3.0 -> 0.870
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from maskkv_vllm.config import CacheConfig
from maskkv_vllm.models.llada_config import LLaDAConfig
from maskkv_vllm.sampler.remasking import (
    gumbel_candidates,
    low_confidences,
    select_transfer,
)
from maskkv_vllm.sampling_params import SamplingParams
from maskkv_vllm.worker.model_runner import ModelRunner

MASK, EOS = 3, 2
CONFIG = LLaDAConfig(
    d_model=4,
    n_heads=1,
    n_kv_heads=1,
    n_layers=1,
    mlp_hidden_size=4,
    vocab_size=4,
    embedding_size=4,
    mask_token_id=MASK,
    eos_token_id=EOS,
    pad_token_id=EOS,
)


class StubModel(nn.Module):
    """Logits depend only on the absolute position: ``table[position]``."""

    def __init__(self, table: dict[int, list[float]]) -> None:
        super().__init__()
        self.config = CONFIG
        self.table = table
        self.dummy = nn.Parameter(torch.zeros(1))

    def forward(self, input_ids, positions, attn=None):
        rows = [[self.table.get(int(p), [0.0] * 4) for p in row] for row in positions]
        return torch.tensor(rows)

    def logits(self, hidden):
        return hidden.float()


def word(token, a):
    row = [0.0] * 4
    row[token] = a
    return row


def run_steps(table, params, num_steps, prompt=(0,)):
    sampler = ModelRunner(StubModel(table), cache_config=CacheConfig("none"))
    seq = sampler.make_sequence(0, list(prompt), params)
    history = []
    for _ in range(num_steps):
        sampler.step([seq])
        history.append(seq.canvas.tolist())
    return seq, history


# The prompt is one token at position 0, so canvas slot i is at position 1 + i.
FOUR = {1: word(0, 1.0), 2: word(1, 3.0), 3: word(0, 2.0), 4: word(1, 1.5)}


def test_one_token_per_step_most_confident_first():
    params = SamplingParams(gen_length=4, block_length=4, steps=4)
    seq, history = run_steps(FOUR, params, 4)
    assert history == [
        [3, 1, 3, 3],  # slot 1 (0.870)
        [3, 1, 0, 3],  # slot 2 (0.711)
        [3, 1, 0, 1],  # slot 3 (0.599)
        [0, 1, 0, 1],  # slot 0 (0.475)
    ]
    assert seq.is_finished and seq.num_steps == 4


def test_two_tokens_per_step():
    params = SamplingParams(gen_length=4, block_length=4, steps=2)
    _, history = run_steps(FOUR, params, 2)
    assert history == [[3, 1, 0, 3], [0, 1, 0, 1]]


def test_blocks_are_semi_autoregressive():
    # Block 0 = slots 0-1, block 1 = slots 2-3; slot 2 is more confident than slot 0
    # but must wait until block 0 is complete.
    params = SamplingParams(gen_length=4, block_length=2, steps=4)
    _, history = run_steps(FOUR, params, 4)
    assert history == [[3, 1, 3, 3], [0, 1, 3, 3], [0, 1, 0, 3], [0, 1, 0, 1]]


def test_ties_go_to_the_lower_position():
    table = {1: word(0, 2.0), 2: word(1, 2.0), 3: word(0, 2.0), 4: word(1, 2.0)}
    params = SamplingParams(gen_length=4, block_length=4, steps=4)
    _, history = run_steps(table, params, 2)
    assert history == [[0, 3, 3, 3], [0, 1, 3, 3]]


def test_threshold_commits_all_confident_at_least_one():
    params = SamplingParams(gen_length=4, block_length=4, steps=4, threshold=0.65)
    seq, history = run_steps(FOUR, params, 3)
    assert history == [
        [3, 1, 0, 3],  # 0.870 and 0.711 exceed 0.65
        [3, 1, 0, 1],  # nothing does: the single best (0.599)
        [0, 1, 0, 1],
    ]
    assert seq.is_finished and seq.num_steps == 3


def test_random_remasking_is_seeded():
    params = SamplingParams(gen_length=4, block_length=4, steps=4, remasking="random")
    _, a = run_steps(FOUR, params, 4)
    _, b = run_steps(FOUR, params, 4)
    assert a == b
    # Candidates still come from the logits; only the order is random.
    assert a[-1] == [0, 1, 0, 1]
    orders = set()
    for seed in range(8):
        p = SamplingParams(
            gen_length=4, block_length=4, steps=4, remasking="random", seed=seed
        )
        _, h = run_steps(FOUR, p, 1)
        orders.add(tuple(h[0]))
    assert len(orders) > 1


def test_logits_eos_inf_forbids_eos():
    table = {1: word(EOS, 5.0), 2: word(1, 1.0)}
    params = SamplingParams(gen_length=2, block_length=2, steps=2)
    _, history = run_steps(table, params, 2)
    assert history[-1] == [EOS, 1]
    params = SamplingParams(gen_length=2, block_length=2, steps=2, logits_eos_inf=True)
    _, history = run_steps(table, params, 2)
    assert EOS not in history[-1]


def test_mask_is_never_committed(  # issue 18: a raw model's argmax can be [MASK]
):
    # Slot 0's argmax is [MASK] (a = 5), its best word token 1 (a = 1): the slot
    # got [MASK] back, stayed masked after its block and was streamed that way.
    table = {1: [0.0, 1.0, 0.0, 5.0], 2: word(0, 2.0)}
    params = SamplingParams(gen_length=2, block_length=2, steps=2)
    seq, history = run_steps(table, params, 2)
    # Its confidence is token 1's under the whole softmax, e / (e + e^5 + 2) =
    # 0.018, so slot 1 (e^2 / (e^2 + 3) = 0.71) goes first.
    assert history == [[MASK, 0], [1, 0]]
    assert seq.is_finished and MASK not in seq.canvas.tolist()


def test_confidences_rank_in_float64_where_bf16_would_tie():
    # 2.0 and 2.004 are the same bf16 number (spacing 1/64 at 2): the official code
    # ranks a bf16 model's confidences in bf16, a tie; ours tell them apart.
    logits = torch.tensor([[2.0, 0, 0, 0], [2.004, 0, 0, 0]])
    assert logits.bfloat16()[0, 0] == logits.bfloat16()[1, 0]
    cand = gumbel_candidates(logits, 0.0)
    conf = low_confidences(logits, cand)
    assert conf.dtype == torch.float64 and conf[1] > conf[0]
    assert select_transfer(conf, torch.tensor([True, True]), 1, None).tolist() == [1]


def test_temperature_samples_from_softmax():
    # Slot 0: [MASK] excluded, p(token 0) = e^1/(e^1+2) = 0.576; sampling at T=1
    # picks the other tokens too, greedy never does.
    table = {1: word(0, 1.0)}
    counts = torch.zeros(4)
    for seed in range(200):
        p = SamplingParams(
            gen_length=1, block_length=1, steps=1, temperature=1.0, seed=seed
        )
        _, h = run_steps(table, p, 1)
        counts[h[0][0]] += 1
    assert 95 <= counts[0] <= 140  # ~115 expected
    assert counts[1] > 20 and counts[2] > 20 and counts[MASK] == 0


def test_output_cuts_at_first_eos():
    table = {1: word(1, 3.0), 2: word(EOS, 2.0), 3: word(0, 1.0), 4: word(EOS, 1.5)}
    params = SamplingParams(gen_length=4, block_length=4, steps=4)
    sampler = ModelRunner(StubModel(table), cache_config=CacheConfig("none"))
    (out,) = sampler.generate([[0]], params)
    assert out.token_ids == [1] and out.finish_reason == "stop"
    (out,) = sampler.generate(
        [[0]], SamplingParams(gen_length=1, block_length=1, steps=1)
    )
    assert out.token_ids == [1] and out.finish_reason == "length"


def test_cfg_combines_branches():
    from maskkv_vllm.sampler.sequence import DiffusionSequence

    params = SamplingParams(gen_length=2, block_length=2, steps=2, cfg_scale=1.5)
    seq = DiffusionSequence(0, 0, [0, 1], params, MASK, EOS, torch.device("cpu"))
    assert [b.prompt_ids.tolist() for b in seq.branches] == [[0, 1], [MASK, MASK]]
    cond = torch.tensor([[2.0, 0.0]])
    uncond = torch.tensor([[1.0, 1.0]])
    # uncond + (1.5 + 1) * (cond - uncond) = [1 + 2.5, 1 - 2.5]
    assert seq.combine_logits([cond, uncond]).tolist() == [[3.5, -1.5]]


def test_pinned_tokens_replace_a_completed_block_and_only_it():
    # The stub commits [0, 1] in block 0 and [0, 1] in block 1; pins of block 0
    # (a restarted request's streamed tokens) win once block 0 completes.
    p = SamplingParams(gen_length=4, block_length=2, steps=4)
    sampler = ModelRunner(StubModel(FOUR), cache_config=CacheConfig("none"))
    seq = sampler.make_sequence(0, [0], p)
    seq.pin([1, 0])
    sampler.step([seq])
    assert seq.canvas.tolist() == [MASK, 1, MASK, MASK]  # block 0 still open
    sampler.step([seq])
    assert seq.canvas.tolist() == [1, 0, MASK, MASK]
    while not seq.is_finished:
        sampler.step([seq])
    assert seq.canvas.tolist() == [1, 0, 0, 1]


def test_pinning_more_than_the_canvas_is_refused():
    p = SamplingParams(gen_length=2, block_length=2, steps=2)
    sampler = ModelRunner(StubModel(FOUR), cache_config=CacheConfig("none"))
    seq = sampler.make_sequence(0, [0], p)
    with pytest.raises(ValueError, match="3 pinned tokens exceed gen_length 2"):
        seq.pin([0, 0, 0])
