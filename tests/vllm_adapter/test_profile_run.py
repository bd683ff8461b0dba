"""vLLM's memory profile sees a denoising step's sampling (issue 24).

vLLM sizes the KV cache from the peak of its profile run, which ends with
``_dummy_sampler_run``: ours runs a step's worst sampling there (one full chunk
of logits with Gumbel noise and softmax confidences). The CPU runner runs the
same ``profile_run`` as CUDA's when asked; peaks come from torch's CPU
profiler (the ``peak_bytes`` fixture).
"""

from __future__ import annotations

import pytest

pytest.importorskip("vllm")

from maskkv_vllm.sampler.step_proposal import LOGITS_CHUNK_ROWS  # noqa: E402
from maskkv_vllm.sampling_params import SamplingParams  # noqa: E402
from maskkv_vllm.vllm_adapter.entrypoints.api import generate, make_llm  # noqa: E402

pytestmark = pytest.mark.vllm


@pytest.fixture(scope="module")
def llm(vllm_tiny_dir):
    return make_llm(str(vllm_tiny_dir), max_model_len=512, max_num_seqs=4)


@pytest.fixture
def runner(llm):
    core = llm.llm_engine.engine_core.engine_core
    return core.model_executor.driver_worker.worker.model_runner


def test_the_profile_run_samples_one_full_chunk_at_its_worst(runner, monkeypatch):
    import maskkv_vllm.vllm_adapter.worker.diffusion_runner as diffusion_runner

    calls = []
    chunk = diffusion_runner.propose_chunk

    def spy(logits, rule, uniform):
        calls.append((tuple(logits.shape), rule, tuple(uniform.shape)))
        return chunk(logits, rule, uniform)

    monkeypatch.setattr(diffusion_runner, "propose_chunk", spy)
    runner.profile_run()
    vocab = runner.get_model().config.vocab_size
    ((shape, rule, noise),) = calls
    assert shape == noise == (LOGITS_CHUNK_ROWS, vocab)
    assert rule.temperature > 0 and rule.remasking == "low_confidence"


def test_no_real_step_samples_with_more_memory_than_the_profile(
    llm, runner, monkeypatch, peak_bytes
):
    import torch

    hidden = torch.zeros(8, runner.get_model().config.d_model)
    profiled = peak_bytes(lambda: runner._dummy_sampler_run(hidden))
    peaks = []
    denoise = runner._denoise

    def measured(h):
        out = []
        peaks.append(peak_bytes(lambda: out.append(denoise(h))))
        return out[0]

    monkeypatch.setattr(runner, "_denoise", measured)
    # Two requests, each one block of 7 chunks of slots, sampled at T = 1.
    params = SamplingParams(
        gen_length=448, block_length=448, steps=4, temperature=1.0, seed=0
    )
    assert len(generate(llm, ["Hi", "Yo"], params)) == 2
    assert len(peaks) == 4  # both requests in each of the 4 steps
    # The outputs of a step (ids and confidences of 2 x 448 slots) on top.
    assert max(peaks) <= profiled + 2 * 448 * 64
