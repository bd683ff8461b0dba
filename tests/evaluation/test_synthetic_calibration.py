"""benchmarks/synthetic_calibration.py: calibration prompts for maskkv profile."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

from maskkv_vllm.evaluation.harness import HELD_OUT_SEED
from maskkv_vllm.evaluation.synthetic import make_samples

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "synthetic_calibration.py"
spec = importlib.util.spec_from_file_location("synthetic_calibration", SCRIPT)
sc = importlib.util.module_from_spec(spec)
spec.loader.exec_module(sc)


def test_prompts_come_from_a_seed_of_their_own(tmp_path):
    out = tmp_path / "c.jsonl"
    sc.main(["--tasks", "kv", "needle", "--samples", "3", "--prompt-tokens", "64",
             "-o", str(out)])  # fmt: skip
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    mine = make_samples(sc.CALIBRATION_SEED, 3, 64, ("kv", "needle"))
    assert rows == [{"prompt": s.prompt} for s in mine]
    assert [s.task for s in mine] == ["kv", "needle", "kv"]
    held_out = make_samples(HELD_OUT_SEED, 3, 64, ("kv", "needle"))
    assert not {r["prompt"] for r in rows} & {s.prompt for s in held_out}
