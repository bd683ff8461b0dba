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
