"""Same tokens, same text, in both engines (issue 25, item 9).

The word-level ``retrieval`` model shows the difference a decoder that joins
words with spaces makes: vLLM's detokenizer reads the answer after the prompt
(``" 0 7 0"``), the embedded engine used to decode it alone (``"0 7 0"``).
"""

from __future__ import annotations

import random

import pytest

pytest.importorskip("vllm")

from maskkv_vllm.engine.llm import LLM as EmbeddedLLM  # noqa: E402
from maskkv_vllm.evaluation.synthetic import make_sample  # noqa: E402
from maskkv_vllm.models.builtin import resolve_model  # noqa: E402
from maskkv_vllm.sampling_params import SamplingParams  # noqa: E402

pytestmark = pytest.mark.vllm


def test_vllm_s_text_is_the_embedded_engine_s():
    from vllm import SamplingParams as VllmParams

    from maskkv_vllm.vllm_adapter.entrypoints.api import generate, make_llm

    path = str(resolve_model("retrieval"))
    rng = random.Random(3)
    prompts = [make_sample(rng, "kv", 96).prompt for _ in range(3)]
    params = SamplingParams(gen_length=8, block_length=8, steps=8)
    want = EmbeddedLLM(path, dtype="float32").generate(prompts, params, use_tqdm=False)
    llm = make_llm(path, max_model_len=256)
    ours = generate(llm, prompts, params)
    # vLLM's own detokenizer, as its server runs it (skip_special_tokens).
    extra = {"maskkv": {"gen_length": 8, "block_length": 8, "steps": 8}}
    raw = llm.generate(
        prompts, VllmParams(max_tokens=8, temperature=0.0, extra_args=extra)
    )
    texts = [o.outputs[0].text for o in raw]
    assert [o.token_ids for o in ours] == [o.token_ids for o in want]
    assert texts == [o.text for o in ours] == [o.text for o in want]
    assert all(t.startswith(" ") for t in texts)
