"""benchmarks/eviction.py runs end to end on a tiny model (its flags once read a
renamed field: --block-size into args.page_size)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "eviction.py"


def test_the_eviction_benchmark_runs_with_its_page_size_flag(tmp_path):
    out = tmp_path / "rows.json"
    args = ["--prompt-len", "64", "--budgets", "8", "--policies", "maskkv",
            "--layers", "2", "--heads", "2", "--head-dim", "32", "--page-size", "8",
            "--json", str(out)]  # fmt: skip
    run = subprocess.run(
        [sys.executable, str(SCRIPT), *args], capture_output=True, text=True
    )
    assert run.returncode == 0, run.stderr
    assert "page = 8 slots" in run.stdout and out.exists()
