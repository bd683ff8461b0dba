"""The bench's lockstep timing: modes take one step each in turn."""

from __future__ import annotations

import pytest

from maskkv_vllm.bench.common import lockstep_times
from maskkv_vllm.bench.figures import sampler_for, step_time_curve


class _Seq:
    def __init__(self, steps: int) -> None:
        self.left = steps

    @property
    def is_finished(self) -> bool:
        return self.left == 0


class _Sampler:
    def __init__(self, name: str, log: list[str]) -> None:
        self.name, self.log = name, log

    def step(self, seqs) -> None:
        self.log.append(self.name)
        seqs[0].left -= 1

    def free(self, seq) -> None:
        self.log.append(f"free {self.name}")


def test_labels_take_one_step_each_in_turn_and_every_sequence_is_freed():
    log: list[str] = []
    samplers = {"a": _Sampler("a", log), "b": _Sampler("b", log)}
    times = lockstep_times(samplers, {"a": _Seq(3), "b": _Seq(1)}, "cpu")
    assert log == ["a", "b", "a", "a", "free a", "free b"]
    assert [len(times["a"]), len(times["b"])] == [3, 1]


def test_sequences_are_freed_when_a_step_raises():
    log: list[str] = []

    class Boom(_Sampler):
        def step(self, seqs) -> None:
            raise RuntimeError("boom")

    samplers = {"a": _Sampler("a", log), "b": Boom("b", log)}
    with pytest.raises(RuntimeError, match="boom"):
        lockstep_times(samplers, {"a": _Seq(2), "b": _Seq(2)}, "cpu")
    assert log == ["a", "free a", "free b"]


def test_step_time_curve_keeps_each_mode_s_best_round(tiny):
    model, tok = tiny
    rows = step_time_curve(
        model, tok, [24, 40], gen=8, budget=8, device="cpu", pool="4MiB",
        none_max_len=24, repeats=2, repeat_max_len=24,
    )  # fmt: skip
    assert [r["rounds"] for r in rows] == [2, 1]
    assert rows[1]["none_step_ms"] is None  # longer than none_max_len: not run
    for row in rows:
        for label in ("prefix", "paged", "maskkv"):
            assert 0 < row[f"{label}_step_ms"] <= row[f"{label}_total_ms"]
            assert 0 < row[f"{label}_first_ms"] <= row[f"{label}_total_ms"]


def test_a_finished_lockstep_round_returns_every_page(tiny):
    model, tok = tiny
    s = sampler_for(model, tok, "paged", "4MiB")
    pool = s.prompt_cache.page_pool
    seqs = {"x": s.make_sequence(0, list(range(30)), _params())}
    lockstep_times({"x": s}, seqs, "cpu")
    assert pool.num_free_pages == pool.num_usable_pages


def _params():
    from maskkv_vllm.bench.figures import params

    return params(8, "maskkv", 8)
