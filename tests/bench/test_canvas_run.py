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
