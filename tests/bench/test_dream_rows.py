"""``maskkv bench --model-shape dream-7b --quick``: the Dream rows end to end on a
tiny random Dream (2 layers, 4 query heads over 2 KV heads of 32, fp32); exact
byte and page counts, no timings."""

from __future__ import annotations

import json

import pytest

from maskkv_vllm.bench.common import ModelSize, bench_checkpoint
from maskkv_vllm.cli import main


@pytest.fixture(scope="module")
def dream_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("dream") / "out"
    assert main(["bench", "--model-shape", "dream-7b", "--quick",
                 "--out-dir", str(out)]) == 0  # fmt: skip
    return json.loads((out / "bench.json").read_text()), (out / "bench.txt")


def test_bytes_per_prompt_token_are_the_kv_heads_not_the_query_heads(dream_run):
    r, _ = dream_run
    b = r["kv_bytes"]
    # A page: 16 slots x (K + V) x 32 dims x 4 bytes; a token of a layer: 2 KV heads.
    assert b["page_bytes"] == 16 * 2 * 32 * 4 == 4096
    assert b["per_token_per_layer"] == 2 * 2 * 32 * 4 == 512
    assert b["per_token_per_layer_bf16"] == 256
    assert b["per_token"] == 2 * 512
    # One 256-token prompt: 2 layers x 2 KV heads x 16 pages with the full cache.
    assert b["full_held_bytes"] == 2 * 2 * 16 * 4096
    assert b["full_per_token"] == 1024.0
    # MaskKV B=16: 2 layers x 32 kept entries = 4 pages at least (2 per layer).
    assert b["maskkv_held_bytes"] == r["long_capacity"]["maskkv"]["held_pages"] * 4096
    assert 4 <= r["long_capacity"]["maskkv"]["held_pages"] <= 8


def test_requests_per_pool_are_the_admission_bounds(dream_run):
    r, _ = dream_run
    full, maskkv = r["long_capacity"]["full"], r["long_capacity"]["maskkv"]
    # 16 MiB = 4096 pages of 4 KiB, one of them the null page.
    assert full["pool_pages"] == maskkv["pool_pages"] == 4095
    assert (full["bound_pages"], full["admitted"]) == (64, 63)
    # Per layer ceil(2 heads x 16 / 16) + 2 = 4 pages, whatever the head split.
    assert (maskkv["bound_pages"], maskkv["admitted"]) == (8, 511)


def test_the_step_rows_are_full_and_maskkv_at_each_prompt_length(dream_run):
    r, _ = dream_run
    assert [x["prompt_len"] for x in r["step_time"]] == [64, 128]
    for row in r["step_time"]:
        assert not any(k.startswith(("none_", "prefix_")) for k in row)
        for label in ("paged", "maskkv"):
            assert row[f"{label}_step_ms"] > 0
            assert row[f"{label}_first_ms"] > 0


def test_the_flat_step_row_steps_every_length_in_lockstep(dream_run):
    r, txt = dream_run
    rows = r["flat_step"]
    assert [x["prompt_len"] for x in rows] == [64, 128]
    assert all(x["step_ms"] > 0 and x["first_ms"] > 0 for x in rows)
    line = next(t for t in txt.read_text().splitlines() if "in lockstep (" in t)
    assert "64: " in line and "(1.00x)" in line and "128: " in line


def test_the_canvas_cache_rows_run_on_dream(dream_run):
    r, _ = dream_run
    (row,) = r["canvas_cache"]
    assert (row["gen"], row["block"], row["prompt_len"]) == (16, 4, 64)
    for label in ("full_none", "full_dual", "maskkv_none", "maskkv_dual"):
        assert row[f"{label}_step_ms"] > 0
    assert 0 <= row["maskkv_agreement"] <= 1


def test_the_report_and_config_name_the_model(dream_run):
    r, txt = dream_run
    assert r["config"]["model"] == {"layers": 2, "heads": 4, "head_dim": 32,
                                    "kv_heads": 2, "intermediate": None,
                                    "arch": "dream"}  # fmt: skip
    assert "throughput_requests" not in r["config"]
    text = txt.read_text()
    assert "random Dream model: 2 layers, 4 query heads over 2 KV heads x 32" in text
    assert "full reserves 64 pages, admits 63" in text
    assert "canvas cache" in text


def test_the_dream_bench_checkpoint_has_grouped_kv_heads(tmp_path):
    size = ModelSize(layers=1, heads=4, head_dim=16, kv_heads=2, arch="dream")
    config = json.loads((bench_checkpoint(size, 128, tmp_path) / "config.json")
                        .read_text())  # fmt: skip
    assert (config["model_type"], config["num_attention_heads"]) == ("Dream", 4)
    assert config["num_key_value_heads"] == 2


def test_an_unknown_arch_is_refused(tmp_path):
    with pytest.raises(ValueError, match="arch='gpt'"):
        bench_checkpoint(ModelSize(arch="gpt"), 128, tmp_path)


def test_the_peer_lane_is_refused_for_dream(tmp_path, capsys):
    assert main(["bench", "--model-shape", "dream-7b", "--quick", "--peer-fast-dllm",
                 str(tmp_path), "--out-dir", str(tmp_path / "out")]) == 2  # fmt: skip
    assert "only with --model-shape llada-small" in capsys.readouterr().err
