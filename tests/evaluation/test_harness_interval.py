"""The eval table's confidence intervals (issue 17: differences must exceed noise)."""

from __future__ import annotations

import pytest

from maskkv_vllm.evaluation.harness import EvalResult, format_table, wilson_interval


@pytest.mark.parametrize(
    ("acc", "n", "lo", "hi"),
    [
        (0.5, 100, 0.4038, 0.5962),
        (0.0, 64, 0.0, 0.0566),  # 0/64: z^2 / (n + z^2), not the normal [0, 0]
        (1.0, 64, 0.9434, 1.0),
        (0.9, 128, 0.8358, 0.9409),
    ],
)
def test_wilson_interval(acc, n, lo, hi):
    got = wilson_interval(acc, n)
    assert got == pytest.approx((lo, hi), abs=1e-4)


def test_the_table_prints_an_interval_per_cell():
    r = EvalResult(1024, 64, 0.5, {"kv": 0.5}, {"maskkv": {0.05: 0.25}}, {0.05: 51})
    text = format_table(r)
    assert "full cache accuracy 0.500 [0.38, 0.62]" in text
    assert "0.25 [0.16,0.37] ( 50%)" in text and "5% B=51" in text
