"""The BERT masked-LM adapter: strict loading, forward against an explicit reference,
the engine's cache modes on it, and (when the wheels are installed) real weights."""

from __future__ import annotations

import importlib.util
import json
import math

import pytest
import torch

from maskkv_vllm.config import CacheConfig
from maskkv_vllm.sampling_params import SamplingParams
from maskkv_vllm.testbeds.bert import (
    BertConfig,
    ResidueTokenizer,
    SmilesTokenizer,
    load_bert,
)
from maskkv_vllm.testbeds.bert.tokenizers import read_vocab
from maskkv_vllm.worker.model_runner import ModelRunner

TINY_VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *"ACDEFGHIKLMNPQRSTVWY"]
D, H, LAYERS, FF, MAXLEN = 32, 4, 2, 64, 64


def _hf_state(seed: int = 0) -> dict[str, torch.Tensor]:
    """A random BertForMaskedLM state dict with HF names (plus ignorable extras)."""
    g = torch.Generator().manual_seed(seed)
    V = len(TINY_VOCAB)

    def r(*shape, scale=0.2):
        return torch.randn(*shape, generator=g) * scale

    def ln(prefix):
        return {f"{prefix}.weight": 1 + r(D), f"{prefix}.bias": r(D)}

    sd = {
        "bert.embeddings.position_ids": torch.arange(MAXLEN)[None],
        "bert.embeddings.word_embeddings.weight": r(V, D, scale=1.0),
        "bert.embeddings.position_embeddings.weight": r(MAXLEN, D, scale=1.0),
        "bert.embeddings.token_type_embeddings.weight": r(2, D),
        **ln("bert.embeddings.LayerNorm"),
    }
    for i in range(LAYERS):
        p = f"bert.encoder.layer.{i}"
        for name in ("query", "key", "value"):
            sd[f"{p}.attention.self.{name}.weight"] = r(D, D)
            sd[f"{p}.attention.self.{name}.bias"] = r(D)
        sd[f"{p}.attention.output.dense.weight"] = r(D, D)
        sd[f"{p}.attention.output.dense.bias"] = r(D)
        sd.update(ln(f"{p}.attention.output.LayerNorm"))
        sd[f"{p}.intermediate.dense.weight"] = r(FF, D)
        sd[f"{p}.intermediate.dense.bias"] = r(FF)
        sd[f"{p}.output.dense.weight"] = r(D, FF)
        sd[f"{p}.output.dense.bias"] = r(D)
        sd.update(ln(f"{p}.output.LayerNorm"))
    sd["bert.pooler.dense.weight"] = r(D, D)
    sd["bert.pooler.dense.bias"] = r(D)
    sd["cls.predictions.transform.dense.weight"] = r(D, D)
    sd["cls.predictions.transform.dense.bias"] = r(D)
    sd.update(ln("cls.predictions.transform.LayerNorm"))
    sd["cls.predictions.decoder.weight"] = sd["bert.embeddings.word_embeddings.weight"]
    sd["cls.predictions.bias"] = r(V)
    sd["cls.predictions.decoder.bias"] = sd["cls.predictions.bias"]
    sd["cls.seq_relationship.weight"] = r(2, D)
    sd["cls.seq_relationship.bias"] = r(2)
    return sd


def _write(path, sd):
    path.mkdir(parents=True, exist_ok=True)
    cfg = {
        "hidden_size": D,
        "num_attention_heads": H,
        "num_hidden_layers": LAYERS,
        "intermediate_size": FF,
        "max_position_embeddings": MAXLEN,
        "vocab_size": len(TINY_VOCAB),
        "type_vocab_size": 2,
        "layer_norm_eps": 1e-12,
        "hidden_act": "gelu",
    }
    (path / "config.json").write_text(json.dumps(cfg))
    (path / "vocab.txt").write_text("\n".join(TINY_VOCAB) + "\n")
    torch.save(sd, path / "pytorch_model.bin")
    return path


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    sd = _hf_state()
    path = _write(tmp_path_factory.mktemp("bert") / "tiny", sd)
    return path, sd


def _reference(sd, ids: list[int]) -> torch.Tensor:
    """MLM logits of one unpadded sequence, written out head by head."""

    def ln(x, p):
        mu = x.mean(-1, keepdim=True)
        var = ((x - mu) ** 2).mean(-1, keepdim=True)
        return (x - mu) / torch.sqrt(var + 1e-12) * sd[p + ".weight"] + sd[p + ".bias"]

    def lin(x, p):
        return x @ sd[p + ".weight"].T + sd[p + ".bias"]

    def gelu(x):
        return 0.5 * x * (1 + torch.erf(x / math.sqrt(2)))

    t = len(ids)
    e = "bert.embeddings"
    x = (
        sd[f"{e}.word_embeddings.weight"][ids]
        + sd[f"{e}.position_embeddings.weight"][:t]
        + sd[f"{e}.token_type_embeddings.weight"][0]
    )
    x = ln(x, f"{e}.LayerNorm")
    hd = D // H
    for i in range(LAYERS):
        p = f"bert.encoder.layer.{i}"
        q = lin(x, f"{p}.attention.self.query")
        k = lin(x, f"{p}.attention.self.key")
        v = lin(x, f"{p}.attention.self.value")
        heads = []
        for h in range(H):
            sl = slice(h * hd, (h + 1) * hd)
            scores = q[:, sl] @ k[:, sl].T / math.sqrt(hd)
            heads.append(torch.softmax(scores, dim=-1) @ v[:, sl])
        a = lin(torch.cat(heads, dim=-1), f"{p}.attention.output.dense")
        x = ln(a + x, f"{p}.attention.output.LayerNorm")
        f = lin(gelu(lin(x, f"{p}.intermediate.dense")), f"{p}.output.dense")
        x = ln(f + x, f"{p}.output.LayerNorm")
    c = "cls.predictions"
    h = ln(gelu(lin(x, f"{c}.transform.dense")), f"{c}.transform.LayerNorm")
    return h @ sd[f"{c}.decoder.weight"].T + sd[f"{c}.bias"]


def test_forward_matches_explicit_reference(tiny):
    path, sd = tiny
    model, report = load_bert(path, return_report=True)
    assert report.ignored == [
        "bert.embeddings.position_ids",
        "bert.pooler.dense.bias",
        "bert.pooler.dense.weight",
        "cls.seq_relationship.bias",
        "cls.seq_relationship.weight",
    ]
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(5, len(TINY_VOCAB), (2, 21), generator=g)
    pos = torch.arange(21).expand(2, -1)
    with torch.no_grad():
        got = model.mlm_logits(model(ids, pos))
    for row in range(2):
        ref = _reference(sd, ids[row].tolist())
        torch.testing.assert_close(got[row], ref, atol=1e-5, rtol=1e-5)


def test_config_and_logits_suppress_specials(tiny):
    model = load_bert(tiny[0])
    c = model.config
    assert (c.n_layers, c.n_heads, c.n_kv_heads, c.head_dim) == (LAYERS, H, H, D // H)
    assert (c.mask_token_id, c.eos_token_id, c.pad_token_id) == (4, 3, 0)
    assert c.embedding_size == c.vocab_size == len(TINY_VOCAB)
    assert c.max_sequence_length == MAXLEN and model.rope_scaling == 1.0
    assert len(model.blocks) == LAYERS
    logits = model.logits(torch.zeros(3, D))
    assert logits.dtype == torch.float32 and logits.shape == (3, len(TINY_VOCAB))
    assert torch.isinf(logits[:, [0, 1, 2, 4]]).all()  # PAD UNK CLS MASK
    assert torch.isfinite(logits[:, 3]).all()  # SEP stays (it is EOS)
    with pytest.raises(ValueError, match="pad_token_id must differ"):
        BertConfig(1, 1, 8, 8, 10, 4, 3, 4, 2, suppress_token_ids=(4,))


def test_strict_loading_names_bad_tensors(tmp_path):
    sd = _hf_state()
    sd.pop("bert.encoder.layer.1.output.dense.bias")
    sd["bert.encoder.layer.0.extra.weight"] = torch.zeros(1)
    path = _write(tmp_path / "bad", sd)
    with pytest.raises(ValueError) as e:
        load_bert(path)
    assert "bert.encoder.layer.1.output.dense.bias" in str(e.value)
    assert "bert.encoder.layer.0.extra.weight" in str(e.value)
    sd = _hf_state()
    sd["cls.predictions.decoder.bias"] = sd["cls.predictions.bias"] + 1
    with pytest.raises(ValueError, match="decoder.bias"):
        load_bert(_write(tmp_path / "bias", sd))
    sd = _hf_state()
    del sd["cls.predictions.decoder.weight"]  # tied: taken from word embeddings
    _, report = load_bert(_write(tmp_path / "tied", sd), return_report=True)
    assert report.tied_decoder


def test_paged_cache_matches_no_cache(tiny):
    model = load_bert(tiny[0])
    tok = ResidueTokenizer.from_file(tiny[0] / "vocab.txt")
    prompts = [tok.encode("EVQLVESGGGLVQPGGSLRLSCAASGFTF"), tok.encode("QVQLVQSGAEVK")]
    params = SamplingParams(gen_length=12, block_length=4, steps=12)
    caches = {
        "none": CacheConfig("none"),
        # Refreshing the prompt KV every step is exactly the uncached computation.
        "paged_refresh": CacheConfig("paged", num_pages=256, prompt_refresh_interval=1),
        # Without refresh the prompt KV is frozen at step 0: the same as "prefix".
        "prefix": CacheConfig("prefix"),
        "paged": CacheConfig("paged", num_pages=256),
    }
    outs = {}
    for name, cache in caches.items():
        sampler = ModelRunner(model, tok, cache, early_stop=False)
        outs[name] = [o.token_ids for o in sampler.generate(prompts, params)]
    assert outs["paged_refresh"] == outs["none"]
    assert outs["paged"] == outs["prefix"]
    # An evicting policy runs on the adapter and gives every page back.
    sampler = ModelRunner(
        model, tok, CacheConfig("paged", num_pages=256), early_stop=False
    )
    evict = SamplingParams(
        gen_length=12, block_length=4, steps=12, kv_policy="maskkv", kv_budget=8
    )
    out = sampler.generate(prompts, evict)
    assert all(len(o.token_ids) <= 12 for o in out)
    pool = sampler.prompt_cache.cache.pool
    assert pool.num_free_pages == pool.num_usable_pages


def test_tokenizers(tmp_path):
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "C", "c", "1", "(", ")"]
    vocab += ["=", "O", "N", ">>", ".", "Cl", "[N+]", "[O-]", "Br"]
    (tmp_path / "vocab.txt").write_text("\n".join(vocab))
    tok = SmilesTokenizer.from_file(tmp_path / "vocab.txt")
    smi = "CC(=O)Cl.Nc1ccccc1>>CC(=O)Nc1ccccc1"
    ids = tok.encode(smi)
    assert ids[0] == tok.cls_token_id and tok.decode(ids) == smi
    assert tok.decode(tok.tokenize("O=[N+]([O-])Br")) == "O=[N+]([O-])Br"
    assert tok.tokenize("Cl") == [vocab.index("Cl")]  # not C + l
    assert tok.stop_token_ids == (3,)
    assert tok.tokenize("S") == [1]  # [UNK]
    res = ResidueTokenizer(read_vocab(tmp_path / "vocab.txt"))
    assert res.decode(res.encode("C N O")) == "CNO"


# ---------------------------------------------------------------------------------
# Real pretrained weights shipped in wheels


def _installed(name: str) -> bool:
    return importlib.util.find_spec(name) is not None


def _masked_top1(model, tok, texts, frac=0.15, seed=0) -> tuple[float, int]:
    """Top-1 of the MLM head on ~15% masked positions of [CLS] text [SEP]."""
    g = torch.Generator().manual_seed(seed)
    hits = total = 0
    for text in texts:
        ids = torch.tensor([*tok.encode(text), tok.sep_token_id])[None]
        pick = torch.rand(ids.shape[1], generator=g) < frac
        pick[0] = pick[-1] = False
        x = ids.masked_fill(pick[None], tok.mask_token_id)
        pos = torch.arange(ids.shape[1])[None]
        with torch.no_grad():
            pred = model.logits(model(x, pos)).argmax(-1)
        hits += int((pred[0, pick] == ids[0, pick]).sum())
        total += int(pick.sum())
    return hits / total, total


@pytest.mark.skipif(not _installed("rxnfp"), reason="pip install --no-deps rxnfp")
def test_rxnfp_real_weights():
    from maskkv_vllm.testbeds.bert import load_rxnfp
    from maskkv_vllm.testbeds.bert.tasks import REACTIONS

    model, tok = load_rxnfp()
    assert model.config.n_layers == 12 and model.config.vocab_size == 591
    top1, n = _masked_top1(model, tok, REACTIONS)
    assert n > 100
    assert top1 > 0.6, top1  # chance 1/591; measured 0.937 on 270 positions


@pytest.mark.skipif(not _installed("antiberty"), reason="pip install antiberty")
def test_antiberty_real_weights():
    from maskkv_vllm.testbeds.bert import load_antiberty
    from maskkv_vllm.testbeds.bert.tasks import ANTIBODIES

    model, tok = load_antiberty()
    assert model.config.n_layers == 8 and model.config.vocab_size == 25
    top1, n = _masked_top1(model, tok, [s for _, s in ANTIBODIES[:12]])
    assert n > 100
    assert top1 > 0.5, top1  # chance ~1/20; measured 0.842 on 228 positions


def test_the_adaptive_canvas_cache_is_refused_by_name(tiny):
    # A post-norm BERT layer has no value / attn_proj / ffn pieces to run.
    model = load_bert(tiny[0])
    tok = ResidueTokenizer.from_file(tiny[0] / "vocab.txt")
    sampler = ModelRunner(model, tok, CacheConfig("paged", num_pages=256))
    params = SamplingParams(
        gen_length=4, block_length=4, steps=4, canvas_cache="adaptive"
    )
    with pytest.raises(ValueError, match="canvas_cache='adaptive' needs a model"):
        sampler.generate([tok.encode("EVQLV")], params)
    assert sampler.prompt_cache.cache.pool.num_used_pages == 0
