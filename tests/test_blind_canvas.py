"""``train_model --blind-canvas``: rows whose canvas sees only the prompt's last
tokens, so those tokens (SnapKV's window) must look the answer up."""

from __future__ import annotations

import json

import pytest
import torch

from maskkv_vllm.models.attention import DenseAttention
from tests.test_train_model import micro_model, micro_run, tm


def test_a_blind_canvas_sees_itself_and_the_prompts_last_window_only():
    # Row 0: 1 pad, prompt at columns 1-6, canvas 7-9; window 2: columns 5-6.
    key_mask = torch.tensor([[False] + [True] * 9, [True] * 10])
    attn = tm.BlindAttention(key_mask, None, 3, torch.tensor([True, False]), window=2)
    seen = attn.mask[:, 0]  # (B, Tq, Tk)
    for q in (7, 8, 9):
        assert seen[0, q].nonzero().flatten().tolist() == [5, 6, 7, 8, 9]
        assert seen[1, q].all()  # a row not blinded sees every key
    assert seen[0, 3].tolist() == key_mask[0].tolist()  # the prompt still sees all


def test_both_blinds_compose_on_one_row():
    key_mask = torch.ones(1, 8, dtype=torch.bool)
    both = torch.tensor([True])
    seen = tm.BlindAttention(key_mask, both, 2, both, window=1).mask[0, 0]
    assert seen[5].nonzero().flatten().tolist() == [0, 1, 2, 3, 4, 5]  # no canvas
    assert seen[6].nonzero().flatten().tolist() == [5, 6, 7]  # window + canvas


def test_a_one_layer_blind_canvas_ignores_the_far_prompt(tok):
    # With one layer nothing carries the far prompt into the window, so a blinded
    # row's canvas outputs do not move when the far prompt changes.
    model = micro_model(tok, prior=False).eval()
    ids = torch.randint(5, 40, (2, 48), generator=torch.Generator().manual_seed(0))
    positions = torch.arange(48).expand(2, 48)
    key_mask = torch.ones(2, 48, dtype=torch.bool)
    other = ids.clone()
    other[:, :8] = 41  # far prompt: before the last 32 prompt tokens
    blind = torch.tensor([True, False])
    with torch.no_grad():
        a, b = (model(x, positions, tm.BlindAttention(key_mask, None, 8, blind))
                for x in (ids, other))  # fmt: skip
        dense = model(ids, positions, DenseAttention(key_mask))
    torch.testing.assert_close(a[0, -8:], b[0, -8:])
    assert not torch.allclose(a[1, -8:], b[1, -8:])
    torch.testing.assert_close(a[1], dense[1])


def test_a_blind_canvas_run_records_it_in_the_objective(tmp_path):
    out = tmp_path / "ck"
    run = micro_run(out, "--blind-canvas", "0.5", length=32)
    assert run.step == 2
    meta = json.loads((out / "training.json").read_text())
    assert meta["objective"].endswith(
        "canvas blind to all but the prompt's last 32 tokens on 50% of rows"
    )


@pytest.mark.parametrize("flag", ["--blind-canvas", "--blind-prompt"])
def test_a_blind_share_outside_0_1_is_refused_by_value(flag, capsys):
    with pytest.raises(SystemExit):
        tm.parse_args(["--out", "unused", flag, "1.5"])
    assert f"{flag} 1.5 must be within [0, 1]" in capsys.readouterr().err
