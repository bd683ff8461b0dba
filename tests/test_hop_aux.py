"""train_model.py --hop-aux: a probe loss on a resolved vt question's first hop."""

from __future__ import annotations

import random
import sys
from pathlib import Path

import pytest
import torch

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCH))
import train_model as tm  # noqa: E402

# 3 layers, 2 heads of 16: the probe reads a middle block.
SMALL = ["--layers", "3", "--heads", "2", "--head-dim", "16", "--mlp", "32"]


def vt_run(tok, *extra: str):
    args = tm.parse_args(["--out", "unused", *SMALL, "--arch", "dream", "--seeds",
                          "0", "--vt-fraction", "1", "--vt-from", "16", "--vt-hops",
                          "1", "--start-length", "48", *extra])  # fmt: skip
    return tm.Run(args, tok, 0)


def split(text: str) -> list[str]:
    return text.split()


def test_first_hops_are_the_resolved_questions_names_and_their_right_hand_sides():
    words = split("x01 = 4 ; x02 = x01 ; ? x02 7 ; ? x02 = x01 ; ? = x02 x01 ; ? x02")
    # The direct forms (`? x02 =`, `? = x02`) ask the first hop itself: not probed.
    assert tm.hop_slots(words) == [(9, ("x01",)), (23, ("x01",))]
    assert tm.hop_slots(split("x01 = 4 ; ? x01")) == [(5, ("4",))]
    # A var-keyed kv record is not a statement: its name has no first hop.
    assert tm.hop_slots(split("x17 : 1 2 3 ; ? x17")) == []


def test_later_hops_follow_the_chain_and_a_digit_once_reached_stays():
    words = split("x01 = 4 ; x02 = x01 ; x03 = x02 ; ? x03")
    assert tm.hop_slots(words, 3) == [(13, ("x02", "x01", "4"))]
    assert tm.hop_slots(words[:9] + ["?", "x02"], 3) == [(10, ("x01", "4", "4"))]


def test_records_add_each_statements_right_hand_name_and_its_lookups():
    words = split("x01 = 4 ; x02 = x01 ; x03 = x02 ; ? x02 = x01 ; ? x03")
    # x01's own right-hand side is a digit, and `? x02 = x01` is a direct question.
    assert tm.hop_slots(words, 2, records=True) == [
        (6, ("4", "4")),
        (10, ("x01", "4")),
        (18, ("x02", "x01")),
    ]
    assert tm.hop_slots(words, 2) == [(18, ("x02", "x01"))]


def test_record_slots_reach_the_probe_only_where_shown(tok):
    run = vt_run(tok, "--hop-aux", "1", "--hop-aux-layer", "1", "--hop-aux-records")
    ids = [tok.token_to_id(w) for w in split("x01 = 4 ; x02 = x01 ; ? x02")]
    target = torch.tensor([ids])
    noisy = target.clone()
    # x02's statement resolves in place to 4; the question's first lookup is x01.
    assert run.hop_aux.slots(noisy, target) == ([0, 0], [6, 9], [[
        tok.token_to_id("4"), tok.token_to_id("x01")]])  # fmt: skip
    noisy[0, 6] = run.config.mask_token_id  # a pretraining row masked it
    assert run.hop_aux.slots(noisy, target)[1] == [9]


def test_records_without_the_probe_loss_are_an_error(capsys):
    with pytest.raises(SystemExit):
        tm.parse_args(["--out", "unused", "--hop-aux-records"])
    assert "--hop-aux-records needs --hop-aux > 0; got --hop-aux 0.0" in (
        capsys.readouterr().err
    )


def test_bad_probe_settings_are_named(tok):
    model = vt_run(tok).model
    with pytest.raises(ValueError, match=r"layer=3 is outside the model's blocks"):
        tm.HopAux(model, tok, (1, 3), 1.0)
    with pytest.raises(ValueError, match=r"layers=\[2, 1\] must rise, one per hop"):
        tm.HopAux(model, tok, (2, 1), 1.0)
    with pytest.raises(ValueError, match=r"weight=0.0 must be > 0"):
        tm.HopAux(model, tok, (1,), 0.0)


def test_a_masked_name_is_not_probed(tok):
    hop = tm.HopAux(vt_run(tok).model, tok, (1, 2), 1.0)
    words = split("x01 = 4 ; x02 = x01 ; ? x02 ; ? x01")
    target = torch.tensor([[tok.token_to_id(w) for w in words]] * 2)
    noisy = target.clone()
    noisy[1, 9] = 0  # row 1's first question hides its name
    x01, four = tok.token_to_id("x01"), tok.token_to_id("4")
    assert hop.slots(noisy, target) == (
        [0, 0, 1],
        [9, 12, 12],
        [[x01, four, four], [four, four, four]],
    )


@pytest.mark.parametrize(("layers", "reached"),
                         [((1,), [True, True, False]), ((0, 1), [True, True, False]),
                          ((0,), [True, False, False])])  # fmt: skip
def test_the_probe_loss_reaches_its_blocks_and_those_below_only(tok, layers, reached):
    run = vt_run(tok)
    hop = tm.HopAux(run.model, tok, layers, 2.0)
    batch = tm.make_batch(random.Random(3), tok, run.config, ["vt"] * 4, 48, 2,
                          gen=torch.Generator().manual_seed(3))  # fmt: skip
    assert hop.slots(batch[0], batch[3])[0], "the batch asks resolved questions"
    probe = hop.loss(run.model, batch, None, tm.GEN_LENGTH) - tm.loss_fn(
        run.model, *batch
    )
    assert probe.item() > 0
    probe.backward()

    def moved(block) -> bool:
        return any(p.grad is not None and p.grad.abs().sum() > 0
                   for p in block.parameters())  # fmt: skip

    assert [moved(b) for b in run.model.blocks] == reached
    assert hop.seen > 0


def test_a_run_trains_the_probe_head_and_reports_its_training_accuracy(tok):
    run = vt_run(tok, "--hop-aux", "0.5", "--hop-aux-layer", "1")
    before = [p.detach().clone() for p in run.hop_aux.head.parameters()]
    run.train_step()
    after = list(run.hop_aux.head.parameters())
    assert any(not torch.equal(a, b) for a, b in zip(after, before, strict=True))
    assert run.hop_aux.seen > 0
    assert all(0.0 <= a <= 1.0 for a in run.hop_aux.accuracy())
    assert run.hop_aux.seen == 0  # reset for the next check
    assert vt_run(tok).hop_aux is None  # off by default: the stream is unchanged
