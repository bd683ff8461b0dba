"""``scripts/gpu_check.sh --dry-run``: the GPU check's own code, on the CPU in tiny
shapes, prints one honest line per check and writes its report under $OUT."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "gpu_check.sh"
CHECKS = ("triton", "engine", "bench", "canvas", "gpu-tests", "vllm")


def _has(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


def test_dry_run_runs_every_check_and_reports(tmp_path):
    env = {**os.environ, "PYTHON": sys.executable, "OUT": str(tmp_path)}
    env.pop("TRITON_INTERPRET", None)
    done = subprocess.run(
        ["bash", str(SCRIPT), "--dry-run"],
        env=env, capture_output=True, text=True, timeout=400,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    lines = {
        line.split(":", 1)[0].split()[1]: line
        for line in done.stdout.splitlines()
        if line.startswith(("PASS ", "FAIL ", "SKIP "))
    }
    assert list(lines) == list(CHECKS), done.stdout
    triton = "PASS" if _has("triton") else "SKIP"
    assert lines["triton"].startswith(f"{triton} triton: "), lines["triton"]
    assert lines["engine"].startswith("PASS engine: "), lines["engine"]
    assert "none = prefix = paged (refresh 1) equal" in lines["engine"]
    assert lines["bench"].startswith("PASS bench: "), lines["bench"]
    assert lines["canvas"].startswith("PASS canvas: "), lines["canvas"]
    assert "mean step dual/none" in lines["canvas"]
    assert "adaptive (ratio 1) = none tokens" in lines["canvas"]
    # Without CUDA every GPU-marked test is skipped, and says why.
    assert lines["gpu-tests"].startswith(("SKIP gpu-tests: ", "PASS gpu-tests: "))
    assert "needs a CUDA GPU" in lines["gpu-tests"] or "PASS" in lines["gpu-tests"]
    vllm = lines["vllm"]
    assert vllm.startswith(("SKIP vllm: ", "PASS vllm: ")), vllm
    if not _has("vllm"):
        assert "import vllm failed" in vllm
    report = (tmp_path / "gpu_check.txt").read_text().splitlines()
    assert report[0].startswith("machine: ") and "torch" in report[0]
    assert report[1:] == list(lines.values())
    data = json.loads((tmp_path / "gpu_check.json").read_text())
    assert data["dry_run"] is True and list(data["checks"]) == list(CHECKS)
    assert data["machine"]["torch"]
    assert (tmp_path / "gpu_check_logs" / "engine.log").is_file()
