"""An LLaDA checkpoint configures its own vLLM engine; other models are untouched.

With the plugin registered, a plain ``vllm.LLM(dir)`` (and so ``vllm serve dir``)
gets LLaDA's scheduler, worker, validator, eager mode, block size and a batched
token limit that holds the longest request (``engine_config``). Oracle: the
embedded engine with the same settings. A tiny random Llama served next to it
keeps vLLM's own scheduler and worker.
"""

from __future__ import annotations

import pytest

pytest.importorskip("vllm")

from maskkv_vllm.engine.llm import LLM as EmbeddedLLM  # noqa: E402
from maskkv_vllm.sampling_params import SamplingParams  # noqa: E402

pytestmark = pytest.mark.vllm

HELLO = [256, 72, 101, 108, 108, 111]


@pytest.fixture(scope="module")
def plain_llm(vllm_tiny_dir):
    """``vllm.LLM`` with no LLaDA-specific argument, and a small token budget."""
    from vllm import LLM

    from maskkv_vllm.vllm_adapter.plugin import register

    register()
    return LLM(
        model=str(vllm_tiny_dir), dtype="float32", max_model_len=512,
        max_num_batched_tokens=64, seed=0,
    )  # fmt: skip


def _greedy(llm, prompts, max_tokens):
    from vllm import SamplingParams as VllmParams

    params = VllmParams(max_tokens=max_tokens, temperature=0.0, detokenize=False)
    outs = llm.generate([{"prompt_token_ids": p} for p in prompts], params)
    return [list(o.outputs[0].token_ids) for o in outs]


def _embedded(vllm_tiny_dir, prompts, gen):
    # vLLM's defaults for a bare max_tokens: one 32-slot block (or the whole
    # canvas), one token per step.
    block = 32 if gen % 32 == 0 else gen
    params = SamplingParams(gen_length=gen, block_length=block, steps=gen)
    ref = EmbeddedLLM(str(vllm_tiny_dir), kv_policy="full", dtype="float32")
    outs = ref.generate(prompts, params, use_tqdm=False)
    # vLLM keeps the stop id in token_ids; the embedded engine strips it.
    return [o.token_ids for o in outs]


def test_the_engine_config_is_llada_s(plain_llm):
    from maskkv_vllm.vllm_adapter.core.scheduler import MaskKVDiffusionScheduler
    from maskkv_vllm.vllm_adapter.entrypoints.validation import VALIDATOR_CLS
    from maskkv_vllm.vllm_adapter.worker.selection import CPU_WORKER_CLS

    cfg = plain_llm.llm_engine.vllm_config
    scheduler = plain_llm.llm_engine.engine_core.engine_core.scheduler
    assert isinstance(scheduler, MaskKVDiffusionScheduler)
    assert cfg.parallel_config.worker_cls == CPU_WORKER_CLS
    assert VALIDATOR_CLS in cfg.model_config.logits_processors
    assert cfg.model_config.enforce_eager
    assert cfg.cache_config.block_size == 32
    # 64 asked for, but a prompt + canvas is one step: raised to max_model_len
    assert cfg.scheduler_config.max_num_batched_tokens == 512
    assert scheduler.max_num_scheduled_tokens == 512


def test_plain_generate_is_llada_s_denoising(plain_llm, vllm_tiny_dir):
    prompts = [HELLO, HELLO[:3] * 40]  # 6 and 120 tokens (> the 64 asked for)
    got = _greedy(plain_llm, prompts, 32)
    want = _embedded(vllm_tiny_dir, prompts, 32)
    assert [g[: len(w)] for g, w in zip(got, want, strict=True)] == want


def test_a_request_that_fills_max_model_len_runs(plain_llm, vllm_tiny_dir):
    prompt = [256] + [65] * 479  # M + L = 480 + 32 = max_model_len
    (got,) = _greedy(plain_llm, [prompt], 32)
    (want,) = _embedded(vllm_tiny_dir, [prompt], 32)
    assert got[: len(want)] == want


def _tiny_llama(path) -> str:
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=262, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=2, num_key_value_heads=2, head_dim=32,
        max_position_embeddings=256,
    )  # fmt: skip
    LlamaForCausalLM(config).save_pretrained(path, safe_serialization=True)
    return str(path)


def test_another_architecture_keeps_vllm_s_engine(tmp_path):
    from vllm import LLM

    from maskkv_vllm.vllm_adapter.plugin import register

    register()
    llm = LLM(
        model=_tiny_llama(tmp_path), dtype="float32", max_model_len=256,
        skip_tokenizer_init=True, enforce_eager=True, block_size=32, seed=0,
    )  # fmt: skip
    try:
        cfg = llm.llm_engine.vllm_config
        scheduler = llm.llm_engine.engine_core.engine_core.scheduler
        assert type(scheduler).__module__.startswith("vllm.")
        assert cfg.parallel_config.worker_cls.startswith("vllm.")
        assert not cfg.model_config.logits_processors
        # autoregressive: one token per step, 8 of them
        (ids,) = _greedy(llm, [[1, 2, 3]], 8)
        assert len(ids) == 8
    finally:
        llm.llm_engine.engine_core.shutdown()


def _pool_bytes(vllm_tiny_dir, monkeypatch, env: str | None, **kwargs) -> int | None:
    from vllm.engine.arg_utils import EngineArgs

    from maskkv_vllm.vllm_adapter.plugin import register

    register()
    if env is None:
        monkeypatch.delenv("VLLM_CPU_KVCACHE_SPACE", raising=False)
    else:
        monkeypatch.setenv("VLLM_CPU_KVCACHE_SPACE", env)
    args = EngineArgs(model=str(vllm_tiny_dir), max_model_len=512, **kwargs)
    return args.create_engine_config().cache_config.kv_cache_memory_bytes


@pytest.mark.parametrize(
    ("env", "kwargs", "expected"),
    [
        (None, {}, 1 << 30),  # was None: 92% of host RAM, refused on a busy box
        ("2", {}, 2 << 30),
        (None, {"kv_cache_memory_bytes": 3 << 20}, 3 << 20),
        (None, {"gpu_memory_utilization": 0.5}, None),
    ],
)
def test_a_cpu_pool_nobody_sized_is_1_gib(
    vllm_tiny_dir, monkeypatch, env, kwargs, expected
):
    assert _pool_bytes(vllm_tiny_dir, monkeypatch, env, **kwargs) == expected


def test_the_log_says_which_dtype_llada_runs_in(plain_llm):
    # Issue 25, item 9: vLLM's CPU default runs a float32 checkpoint in bfloat16.
    from maskkv_vllm.vllm_adapter.engine_config import dtype_line

    line = dtype_line(plain_llm.llm_engine.vllm_config.model_config)
    assert line.startswith("LLaDA runs in torch.float32 (checkpoint weights: ")
