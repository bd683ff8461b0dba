"""``canvas_run``'s own lengths and pool: the canvas rows beyond maskkv bench's."""

from __future__ import annotations

import json

from maskkv_vllm.bench import canvas_run


def test_prompt_lens_and_pool_replace_the_bench_s(tmp_path, capsys):
    out = tmp_path / "rows.json"
    argv = ["--quick", "--repeats", "1", "--prompt-lens", "24", "40"]
    canvas_run.main([*argv, "--pool", "4MiB", "--out", str(out)])
    rows = json.loads(out.read_text())["rows"]
    assert sorted({r["prompt_len"] for r in rows}) == [24, 40]
    assert {(r["gen"], r["block"]) for r in rows} == {(32, 8), (16, 4)}
    assert "    24 |" in capsys.readouterr().out


def test_refresh_agreement_compares_plain_dual_with_the_oracle(tmp_path, capsys):
    out = tmp_path / "agree.json"
    argv = ["--quick", "--skip-canvas", "--refresh-agreement", "--prompt-lens", "24"]
    canvas_run.main([*argv, "--out", str(out)])
    rows = json.loads(out.read_text())["refresh_agreement"]
    assert [(r["gen"], r["block"], r["prompt_len"]) for r in rows] == [
        (32, 8, 24), (16, 4, 24)
    ]  # fmt: skip
    assert all(0.0 <= r["dual_vs_refresh"] <= 1.0 for r in rows)
    assert "gen 32 / block 8, prompt 24:" in capsys.readouterr().out


def test_decode_lines_split_the_prompt_steps_off():
    cfg = canvas_run.suite.QUICK
    d = {
        label: {"tokens_per_s": tps, "seconds": s, "prompt_step_seconds": p,
                "decode_tokens_per_s": dtps, "peak_running": peak}
        for label, tps, s, p, dtps, peak in [
            ("full", 2.0, 100, 20, 2.5, 2),
            ("maskkv", 5.0, 40, 10, 20 / 3, 8),
            ("maskkv_dual", 10.0, 20, 10, 20.0, 8),
        ]
    }  # fmt: skip
    lines = canvas_run.decode_lines(cfg, d)
    assert lines[3] == (
        "  maskkv_dual: 10.00 tok/s, 20 s (10 s in steps that forwarded a prompt; "
        "20.00 tok/s in the rest), peak 8 running"
    )
    assert lines[4:] == [
        "  end to end: MaskKV + dual / full + none: 5.00x; "
        "MaskKV + dual / MaskKV + none: 2.00x",
        "  outside prompt steps: MaskKV + dual / full + none: 8.00x; "
        "MaskKV + dual / MaskKV + none: 3.00x",
    ]
