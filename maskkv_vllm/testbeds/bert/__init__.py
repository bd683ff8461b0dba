"""Pretrained BERT masked LMs (rxnfp, AntiBERTy, from their PyPI wheels) behind the
``DiffusionLM`` protocol, and their two completion tasks
(``benchmarks/bert_testbed.py``)."""

from maskkv_vllm.testbeds.bert.loader import (
    LoadReport,
    load_antiberty,
    load_bert,
    load_rxnfp,
)
from maskkv_vllm.testbeds.bert.model import BertConfig, BertMaskedLM
from maskkv_vllm.testbeds.bert.tokenizers import (
    ResidueTokenizer,
    SmilesTokenizer,
    VocabTokenizer,
)

__all__ = [
    "BertConfig",
    "BertMaskedLM",
    "LoadReport",
    "ResidueTokenizer",
    "SmilesTokenizer",
    "VocabTokenizer",
    "load_antiberty",
    "load_bert",
    "load_rxnfp",
]
