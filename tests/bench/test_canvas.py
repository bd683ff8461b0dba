"""The canvas-cache rows of ``maskkv bench``: their target and their table."""

from __future__ import annotations

import json

from maskkv_vllm.bench import canvas, canvas_run


def row(gen, block, m, full, maskkv):
    """full, maskkv: (none ms, dual ms)."""
    return {
        "prompt_len": m, "gen": gen, "block": block,
        "full_none_step_ms": full[0], "full_dual_step_ms": full[1],
        "maskkv_none_step_ms": maskkv[0], "maskkv_dual_step_ms": maskkv[1],
        "full_agreement": 0.5, "maskkv_agreement": 1.0,
    }  # fmt: skip


def test_the_target_is_the_worst_length_of_the_longest_canvas():
    rows = [
        row(256, 32, 256, (40.0, 8.0), (20.0, 4.0)),
        row(256, 32, 1024, (80.0, 24.0), (20.0, 6.0)),
        row(32, 8, 256, (10.0, 9.0), (5.0, 5.0)),  # a shorter canvas: not the target
    ]
    (full, maskkv) = canvas.targets(rows)
    assert full[0].startswith("full cache: dual step / none step at gen 256 / block 32")
    assert (full[1], full[2]) == (0.3, "<= 0.25")
    assert maskkv[1] == 0.3


def test_the_table_has_a_line_per_row_with_the_ratios():
    lines = canvas.report([row(256, 32, 256, (40.0, 8.0), (20.0, 4.0))])
    assert lines[-1].split(" | ") == [
        " 256/32", "   256", "    40.00", "     8.00", " 0.20", " 0.50",
        "      20.00", "       4.00", " 0.20", " 1.00",
    ]  # fmt: skip


def test_adaptive_rows_get_their_own_lines():
    r = row(256, 32, 256, (40.0, 8.0), (20.0, 4.0))
    r |= {
        "full_adaptive_step_ms": 12.0, "maskkv_adaptive_step_ms": 5.0,
        "full_adaptive_agreement": 0.25, "maskkv_adaptive_agreement": 0.75,
    }  # fmt: skip
    lines = canvas.report([r])
    assert lines[-1].split(" | ") == [
        " 256/32", "   256", "     12.00", " 0.30", " 0.25",
        "        5.00", " 0.25", " 0.75",
    ]  # fmt: skip


def test_every_policy_runs_every_canvas_cache():
    assert [label for label, *_ in canvas.LABELS] == [
        "full_none", "full_dual", "full_adaptive",
        "maskkv_none", "maskkv_dual", "maskkv_adaptive",
    ]  # fmt: skip


def test_earlier_runs_merge_into_one_table_and_plot(tmp_path, capsys):
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    a.write_text(
        json.dumps(
            {
                "rows": [
                    row(32, 8, 256, (10.0, 5.0), (8.0, 4.0)),
                    row(256, 32, 256, (40.0, 10.0), (20.0, 5.0)),
                ]
            }
        )
    )
    b.write_text(json.dumps({"rows": [row(256, 32, 8192, (400.0, 96.0),
                                          (20.0, 6.0))]}))  # fmt: skip
    out, png = tmp_path / "all.json", tmp_path / "all.png"
    canvas_run.main(["--from", str(a), str(b), "--out", str(out), "--plot", str(png)])
    rows = json.loads(out.read_text())["rows"]
    assert [(r["gen"], r["prompt_len"]) for r in rows] == [
        (256, 256), (256, 8192), (32, 256)
    ]  # fmt: skip
    assert " 256/32 |   8192 |    400.00 |     96.00 |  0.24" in capsys.readouterr().out
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_one_layer_dual_equals_its_oracle_and_two_layers_are_measured(tmp_path):
    # With one layer a canvas row's K/V depend on its own token only, so plain
    # dual is exact and equals dual_refresh.
    from maskkv_vllm.bench import figures
    from maskkv_vllm.bench.common import ModelSize, bench_checkpoint
    from maskkv_vllm.models.loader import load_checkpoint

    got = {}
    for layers in (1, 2):
        ckpt = bench_checkpoint(ModelSize(layers, 2, 32), 128, tmp_path / str(layers))
        model, tok = load_checkpoint(ckpt, "float32", "cpu")
        sampler = figures.sampler_for(model, tok, "paged", "8MiB")
        rows = canvas.refresh_agreement(sampler, tok, [40], [(16, 4)], "cpu")
        got[layers] = rows[0]["dual_vs_refresh"]
        assert rows[0]["prompt_len"] == 40 and (rows[0]["gen"], rows[0]["block"]) == (
            16, 4
        )  # fmt: skip
    assert got[1] == 1.0
    # this seeded two-layer model's plain dual drifts from its oracle (15 of 16
    # tokens equal): the measurement compares two different schedules
    assert got[2] == 15 / 16
