"""LongBench report: retention against the full cache, the table, refresh lines."""

from __future__ import annotations

from maskkv_vllm.evaluation import longbench_report as rep


def run(scores, average):
    return {"scores": scores, "average": average}


def test_ratio_is_a_percentage_and_none_over_zero():
    assert rep.ratio(45.0, 90.0) == 50.0
    assert rep.ratio(60.0, 95.0) == 63.16  # 63.157...
    assert rep.ratio(12.0, 0.0) is None


def test_retention_per_task_and_of_the_averages():
    runs = {
        "full": run({"qasper": 40.0, "trec": 0.0, "lcc": 50.0}, 30.0),
        # lcc not run yet by maskkv: skipped, not counted as 0.
        "maskkv": run({"qasper": 30.0, "trec": 10.0}, 20.0),
    }
    assert rep.retention(runs) == {
        "maskkv": {"scores": {"qasper": 75.0, "trec": None}, "average": 66.67}
    }
    assert rep.retention({"full": runs["full"]}) == {}


def test_format_table_puts_retention_beside_the_scores():
    results = {
        "runs": {
            "full": run({"hotpotqa": 90.0, "trec": 100.0}, 95.0),
            "maskkv": run({"hotpotqa": 45.0, "trec": 75.0}, 60.0),
        },
        "retention": {
            "maskkv": {"scores": {"hotpotqa": 50.0, "trec": 75.0}, "average": 63.16}
        },
        "refresh": rep.refresh_record(
            rep.run_refresh("dual", 50, 8, {"trec": {"gen_length": 64, "steps": 64}})
        ),
    }
    assert rep.format_table(results).splitlines() == [
        "task        full  maskkv  maskkv/full %",
        "hotpotqa   90.00   45.00          50.00",
        "trec      100.00   75.00          75.00",
        "average    95.00   60.00          63.16",
        "this run: canvas_cache=dual (canvas outside the current block cached, "
        "refreshed at block boundaries), prompt KV refreshed every 50 steps, block 8",
        "paper: dLLM-Cache Tp=50, Tr=5, rho=0.25, block 8 (our engine has no "
        "dLLM-Cache)",
    ]
