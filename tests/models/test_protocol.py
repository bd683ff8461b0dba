"""The model interface the sampler is typed on holds for every model we run."""

from __future__ import annotations

from maskkv_vllm.models.protocol import DiffusionLM, ModelConfig
from maskkv_vllm.testbeds.bert.model import BertConfig, BertMaskedLM


def test_llada_is_a_diffusion_lm(tiny):
    model, _ = tiny
    assert isinstance(model, DiffusionLM) and isinstance(model.config, ModelConfig)


def test_the_bert_testbed_is_a_diffusion_lm():
    # 1 layer, 2 heads, d 8, mlp 8, vocab 16; mask 3, [SEP] 2, pad 0, [CLS] 1
    config = BertConfig(1, 2, 8, 8, 16, 3, 2, 0, 1, suppress_token_ids=(3,))
    model = BertMaskedLM(config)
    assert isinstance(model, DiffusionLM) and isinstance(model.config, ModelConfig)


def test_something_else_is_not():
    class NoLogits:
        config = None

        def __call__(self, input_ids, positions, attn=None): ...

    assert not isinstance(NoLogits(), DiffusionLM)
