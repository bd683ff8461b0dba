"""Dream (issue 29, item 1): tiny checkpoints load strictly, and the logits equal
two independent references: a float64 forward written here from the math, and
transformers' Qwen2 run without its causal mask (when transformers is installed)."""

from __future__ import annotations

import dataclasses
import json
import math

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from maskkv_vllm.models.attention import DenseAttention
from maskkv_vllm.models.dream import DreamModel, shift_logits
from maskkv_vllm.models.dream_config import DreamConfig
from maskkv_vllm.models.llada import LLaDAModel
from maskkv_vllm.models.llada_config import LLaDAConfig
from maskkv_vllm.models.loader import load_checkpoint, load_model
from maskkv_vllm.models.protocol import DiffusionLM, ModelConfig
from maskkv_vllm.models.tiny import write_tiny_checkpoint
from maskkv_vllm.models.tiny_dream import (
    random_dream_state_dict,
    tiny_dream_config,
    write_tiny_dream_checkpoint,
)

# Byte tokenizer ids: 256 bos, 72 'H', 101 'e', 108 'l', 261 mask.
IDS = torch.tensor([[256, 72, 101, 108, 261, 261, 261]])
# Non-contiguous absolute positions, as after eviction.
POSITIONS = torch.tensor([[0, 1, 2, 5, 9, 10, 40]])

VARIANTS = {
    "gqa": {},  # 4 query heads over 2 KV heads
    "mqa": {"n_kv_heads": 1, "n_layers": 1},
    "mha": {"n_kv_heads": 4},
    "tied": {"tie_word_embeddings": True},
}


@pytest.fixture(scope="module")
def dream_dir(tmp_path_factory):
    """2 layers, 4 query heads over 2 KV heads of 32, byte vocabulary, seed 0."""
    return write_tiny_dream_checkpoint(tmp_path_factory.mktemp("dream"), seed=0)


@pytest.fixture(scope="module")
def model():
    """A unit-scale GQA model (4 query heads over 2 KV heads), built in memory."""
    return model_from(*unit_scale({}))


@pytest.fixture
def ckpt(tmp_path):
    return write_tiny_dream_checkpoint(tmp_path / "ckpt", seed=0, n_layers=1)


def model_from(config, state_dict):
    model = DreamModel(config)
    model.load_state_dict(state_dict, strict=True)
    return model.eval()


def unit_scale(overrides, seed=3):
    """Config and unit-scale weights: activations and logits O(1), so fp32
    rounding stays below 1e-5 (a tied embedding is the LM head: std 1/sqrt(D))."""
    config = tiny_dream_config(**overrides)
    sd = random_dream_state_dict(config, seed=seed, scale=1.0)
    if config.tie_word_embeddings:
        sd["model.embed_tokens.weight"] *= 2.0 / math.sqrt(config.hidden_size)
    return config, sd


# -- the float64 reference, from the math (no maskkv_vllm code) --------------------


def reference_logits(sd, cfg, ids, positions):
    """Dream's shifted logits of one sequence, float64, head by head.

    Args:
        sd: Hugging Face tensor names -> tensors; cfg: a DreamConfig.
        ids, positions: (T,) token ids and absolute positions.

    Returns:
        (T, V) float64: row t predicts token t (read from output t - 1).
    """
    w = {k: v.double() for k, v in sd.items()}
    hd, eps = cfg.head_dim, cfg.rms_norm_eps
    group = cfg.num_attention_heads // cfg.num_key_value_heads

    def rms(x, weight):
        return weight * x / torch.sqrt((x * x).mean(-1, keepdim=True) + eps)

    def rope(x):  # x: (T, hd), rotate-half pairs (i, i + hd/2)
        i = torch.arange(hd // 2, dtype=torch.float64)
        angle = positions.double()[:, None] * cfg.rope_theta ** (-2.0 * i / hd)
        c, s = torch.cos(angle), torch.sin(angle)
        x1, x2 = x[:, : hd // 2], x[:, hd // 2 :]
        return torch.cat([x1 * c - x2 * s, x2 * c + x1 * s], dim=-1)

    x = w["model.embed_tokens.weight"][ids]
    for n in range(cfg.num_hidden_layers):
        p = f"model.layers.{n}."
        a = rms(x, w[p + "input_layernorm.weight"])
        q, k, v = (
            a @ w[f"{p}self_attn.{m}_proj.weight"].T + w[f"{p}self_attn.{m}_proj.bias"]
            for m in "qkv"
        )
        heads = []
        for h in range(cfg.num_attention_heads):
            g = h // group  # the KV head this query head shares
            qh = rope(q[:, h * hd : (h + 1) * hd])
            kh = rope(k[:, g * hd : (g + 1) * hd])
            scores = qh @ kh.T / math.sqrt(hd)  # (T, T): every query, every key
            heads.append(torch.softmax(scores, dim=-1) @ v[:, g * hd : (g + 1) * hd])
        x = x + torch.cat(heads, dim=-1) @ w[p + "self_attn.o_proj.weight"].T
        f = rms(x, w[p + "post_attention_layernorm.weight"])
        gate = f @ w[p + "mlp.gate_proj.weight"].T
        up = f @ w[p + "mlp.up_proj.weight"].T
        x = x + (gate * torch.sigmoid(gate) * up) @ w[p + "mlp.down_proj.weight"].T
    tied = cfg.tie_word_embeddings
    head = w["model.embed_tokens.weight" if tied else "lm_head.weight"]
    logits = rms(x, w["model.norm.weight"]) @ head.T
    return torch.cat([logits[:1], logits[:-1]])


@pytest.mark.parametrize("overrides", VARIANTS.values(), ids=VARIANTS.keys())
def test_logits_match_the_float64_reference(overrides):
    cfg, sd = unit_scale(overrides)
    got = model_from(cfg, sd).token_logits(IDS, POSITIONS)[0]
    want = reference_logits(sd, cfg, IDS[0], POSITIONS[0])
    torch.testing.assert_close(got.double(), want, atol=1e-5, rtol=0)


def test_rope_scaling_multiplies_theta():
    cfg, sd = unit_scale({"n_layers": 1})
    model = DreamModel(cfg, rope_scaling=4.0)
    model.load_state_dict(sd)
    scaled = dataclasses.replace(cfg, rope_theta=cfg.rope_theta * 4.0)
    want = reference_logits(sd, scaled, IDS[0], POSITIONS[0])
    got = model.token_logits(IDS, POSITIONS)[0]
    torch.testing.assert_close(got.double(), want, atol=1e-5, rtol=0)


def test_shift_logits_reads_the_previous_output():
    # Outputs 10, 11, 12 at positions 0, 1, 2: position 0 keeps its own.
    logits = torch.tensor([[[10.0], [11.0], [12.0]]])
    assert shift_logits(logits).flatten().tolist() == [10.0, 10.0, 11.0]
    assert DreamConfig.shifted_logits and not LLaDAConfig.shifted_logits


# -- transformers' Qwen2 with the causal mask replaced (vLLM venv) -----------------


def hf_qwen2(cfg, sd):
    """transformers' Qwen2ForCausalLM with ``cfg``'s shapes and ``sd``'s weights,
    float64, eager attention (which adds a 4-D float mask as given)."""
    transformers = pytest.importorskip("transformers")
    tied = cfg.tie_word_embeddings
    hf_cfg = transformers.Qwen2Config(
        vocab_size=cfg.vocab_size,
        hidden_size=cfg.hidden_size,
        intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_hidden_layers,
        num_attention_heads=cfg.num_attention_heads,
        num_key_value_heads=cfg.num_key_value_heads,
        max_position_embeddings=cfg.max_position_embeddings,
        rms_norm_eps=cfg.rms_norm_eps,
        tie_word_embeddings=tied,
        rope_parameters={"rope_type": "default", "rope_theta": cfg.rope_theta},
        attn_implementation="eager",
    )
    model = transformers.Qwen2ForCausalLM(hf_cfg)
    missing, unexpected = model.load_state_dict(sd, strict=False)
    # A tied checkpoint has no lm_head.weight: Qwen2 shares the embedding's.
    assert not unexpected and missing == (["lm_head.weight"] if tied else [])
    model = model.to(torch.float64).eval()
    head, embed = model.lm_head.weight, model.model.embed_tokens.weight
    assert torch.equal(head, embed) == tied
    return model


def hf_shifted_logits(model, ids, positions, key_mask=None):
    """Qwen2 run bidirectionally: a 4-D additive mask of zeros (of -inf-like
    values on padded keys) replaces the causal one, which transformers passes
    through untouched. Returns (B, T, V) float64, shifted as Dream reads them."""
    b, t = ids.shape
    mask = torch.zeros(b, 1, t, t, dtype=torch.float64)
    if key_mask is not None:
        lowest = torch.finfo(mask.dtype).min
        mask = mask.masked_fill(~key_mask[:, None, None, :], lowest)
    with torch.no_grad():
        out = model(input_ids=ids, attention_mask=mask, position_ids=positions)
    return shift_logits(out.logits)


@pytest.mark.parametrize("overrides", VARIANTS.values(), ids=VARIANTS.keys())
def test_logits_match_transformers_qwen2_run_bidirectionally(overrides):
    cfg, sd = unit_scale(overrides)
    reference = hf_qwen2(cfg, sd)
    got = model_from(cfg, sd).token_logits(IDS, POSITIONS)
    want = hf_shifted_logits(reference, IDS, POSITIONS)
    torch.testing.assert_close(got.double(), want, atol=1e-5, rtol=0)
    # The same model with its causal mask left on is a different network.
    with torch.no_grad():
        causal = reference(input_ids=IDS, position_ids=POSITIONS).logits
    assert (shift_logits(causal) - want).abs().max() > 1e-2


def test_padding_matches_transformers_with_padded_keys_masked():
    cfg, sd = unit_scale({})
    reference = hf_qwen2(cfg, sd)
    ids, positions, key_mask = padded_batch()
    got = model_from(cfg, sd).token_logits(ids, positions, DenseAttention(key_mask))
    want = hf_shifted_logits(reference, ids, positions, key_mask)
    real = key_mask & key_mask.roll(1, dims=1)  # rows whose shifted source is real
    torch.testing.assert_close(got.double()[real], want[real], atol=1e-5, rtol=0)


# -- grouped-query attention and padding through the attention callables ---------


def padded_batch():
    """Row 0: 7 real tokens; row 1: 4 real, then 3 right pads; row 2: 3 left pads,
    then 4 real. Pads are id 257 at position 0: padded keys are masked, so their
    positions never matter."""
    pad, short = [257] * 3, [256, 40, 41, 261]
    ids = torch.tensor([IDS[0].tolist(), short + pad, pad + short])
    positions = torch.tensor([POSITIONS[0].tolist(), [0, 1, 2, 3, 0, 0, 0]])
    positions = torch.cat([positions, torch.tensor([[0, 0, 0, 0, 1, 2, 3]])])
    key_mask = torch.tensor([[True] * 7, [True] * 4 + [False] * 3])
    key_mask = torch.cat([key_mask, key_mask[1:].flip(1)])
    return ids, positions, key_mask


class Recording(DenseAttention):
    """Dense attention that keeps the shapes it was handed, per layer."""

    def __init__(self):
        super().__init__()
        self.seen = []

    def __call__(self, layer, q, k, v):
        self.seen.append((layer, tuple(q.shape), tuple(k.shape), tuple(v.shape)))
        return super().__call__(layer, q, k, v)


class RepeatedKV:
    """Multi-head attention over K/V repeated per query head: query head h reads
    KV head h // (Hq / Hkv), the grouping Dream's GQA uses."""

    def __call__(self, layer, q, k, v):
        group = q.shape[1] // k.shape[1]
        k, v = (t.repeat_interleave(group, dim=1) for t in (k, v))
        return F.scaled_dot_product_attention(q, k, v)


def test_gqa_hands_kv_heads_to_the_attention_callable(model):
    attn = Recording()
    model(IDS, POSITIONS, attn)
    # (B, heads, T, head_dim): 4 query heads, 2 KV heads, per layer in order.
    q, kv = (1, 4, 7, 32), (1, 2, 7, 32)
    assert attn.seen == [(0, q, kv, kv), (1, q, kv, kv)]
    grouped = model(IDS, POSITIONS)
    repeated = model(IDS, POSITIONS, RepeatedKV())
    torch.testing.assert_close(grouped, repeated, atol=1e-5, rtol=1e-5)


def test_padding_changes_nothing_for_real_tokens(model):
    ids, positions, key_mask = padded_batch()
    batched = model(ids, positions, DenseAttention(key_mask))
    for row, real in enumerate(key_mask):
        alone = model(ids[row, real][None], positions[row, real][None])[0]
        torch.testing.assert_close(batched[row, real], alone, atol=1e-5, rtol=1e-5)
    # Shifted, right padding: a real token's logits come from the one before it.
    shifted = model.token_logits(ids, positions, DenseAttention(key_mask))
    alone = model.token_logits(ids[1:2, :4], positions[1:2, :4])[0]
    torch.testing.assert_close(shifted[1, :4], alone, atol=1e-5, rtol=1e-5)


def test_positions_are_the_ones_given(model):
    spread = model(IDS, POSITIONS)
    packed = model(IDS, torch.arange(7)[None])
    assert (spread - packed).abs().max() > 1e-3


# -- loading: dispatch by model_type, round trip, strictness ---------------------


def test_a_dream_checkpoint_loads_as_dream(dream_dir):
    model, tok = load_checkpoint(dream_dir)
    assert isinstance(model, DreamModel)
    assert isinstance(model, DiffusionLM) and isinstance(model.config, ModelConfig)
    c = model.config
    assert (c.n_layers, c.n_heads, c.n_kv_heads, c.head_dim) == (2, 4, 2, 32)
    assert (c.embedding_size, c.max_sequence_length) == (262, 4096)
    assert (tok.mask_token_id, tok.eos_token_id, tok.pad_token_id) == (261, 257, 257)
    assert c.shifted_logits
    raw = json.loads((dream_dir / "config.json").read_text())
    assert (raw["model_type"], raw["architectures"]) == ("Dream", ["DreamModel"])


def test_a_llada_checkpoint_still_loads_as_llada(tmp_path):
    model = load_model(write_tiny_checkpoint(tmp_path, seed=0, n_layers=1))
    assert isinstance(model, LLaDAModel) and not model.config.shifted_logits


def test_round_trip_keeps_every_tensor(dream_dir):
    loaded = load_model(dream_dir)
    written = random_dream_state_dict(loaded.config, seed=0)
    assert loaded.state_dict().keys() == written.keys()
    for name, t in written.items():
        assert torch.equal(loaded.state_dict()[name], t), name
    assert {"lm_head.weight", "model.layers.1.self_attn.q_proj.bias"} <= set(written)
    assert "model.layers.0.self_attn.o_proj.bias" not in written


def test_tied_embeddings_have_no_lm_head(tmp_path):
    model = load_model(write_tiny_dream_checkpoint(tmp_path, tie_word_embeddings=True))
    assert "lm_head.weight" not in model.state_dict()


def test_sharded_equals_single_file(tmp_path):
    one = load_model(write_tiny_dream_checkpoint(tmp_path / "one", seed=5))
    three_dir = write_tiny_dream_checkpoint(tmp_path / "three", seed=5, shards=3)
    three = load_model(three_dir)
    for name, t in one.state_dict().items():
        assert torch.equal(t, three.state_dict()[name]), name


def rewrite_weights(ckpt, edit):
    path = ckpt / "model.safetensors"
    tensors = load_file(str(path))
    edit(tensors)
    save_file(tensors, str(path))


def edit_config(ckpt, **changes):
    path = ckpt / "config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))


def test_missing_tensor_is_named(ckpt):
    rewrite_weights(ckpt, lambda t: t.pop("model.layers.0.self_attn.k_proj.bias"))
    with pytest.raises(ValueError, match=r"missing tensors: .*k_proj\.bias"):
        load_model(ckpt)


def test_unexpected_tensor_is_named(ckpt):
    # Qwen2 has no bias on o_proj; a checkpoint that holds one is not Dream.
    def add(t):
        t["model.layers.0.self_attn.o_proj.bias"] = torch.zeros(128)

    rewrite_weights(ckpt, add)
    with pytest.raises(
        ValueError, match=r"unexpected tensors: model\.layers\.0\.self_attn\.o_proj\."
    ):
        load_model(ckpt)


def test_wrong_shape_is_named(ckpt):
    # A k_proj for 4 KV heads where the config says 2.
    name = "model.layers.0.self_attn.k_proj.weight"
    rewrite_weights(ckpt, lambda t: t.update({name: torch.zeros(128, 128)}))
    with pytest.raises(
        ValueError, match=r"k_proj\.weight has shape \(128, 128\), expected \(64, 128\)"
    ):
        load_model(ckpt)


def test_layer_count_is_checked_before_building(ckpt):
    edit_config(ckpt, num_hidden_layers=1_000_000)
    with pytest.raises(ValueError, match="num_hidden_layers=1000000 but the weights"):
        load_model(ckpt)


@pytest.mark.parametrize("model_type", ["llama", "qwen2", "dream", None])
def test_an_unknown_model_type_is_named_with_the_supported_ones(ckpt, model_type):
    edit_config(ckpt, model_type=model_type)
    with pytest.raises(
        ValueError,
        match=rf"model_type={model_type!r} is not supported "
        r"\(supported: 'llada', 'Dream'\)",
    ):
        load_model(ckpt)


@pytest.mark.parametrize(
    "change, message",
    [
        ({"hidden_act": "gelu"}, r"hidden_act='gelu' is not supported"),
        ({"rope_scaling": {"type": "yarn", "factor": 4.0}}, r"rope_scaling=\{'type'"),
        ({"use_sliding_window": True}, r"use_sliding_window=True is not supported"),
        ({"rope_parameters": {"rope_type": "yarn"}}, r"rope_parameters=.*'yarn'"),
        ({"num_key_value_heads": 3}, r"num_attention_heads=4 is not a multiple of"),
        ({"hidden_size": 130}, r"hidden_size=130 is not divisible"),
        ({"head_dim": 64}, r"head_dim=64 is not supported"),
        ({"mask_token_id": 9999}, r"mask_token_id=9999 is outside \[0, 262\)"),
        ({"mask_token_id": 257}, r"mask_token_id and pad_token_id are both 257"),
        ({"num_attention_heads": "4"}, r"num_attention_heads='4' is not an integer"),
        ({"eos_token_id": [257, 258]}, r"eos_token_id=\[257, 258\] is not an integer"),
        ({"num_hidden_layers": 0}, r"num_hidden_layers=0 must be positive"),
    ],
)
def test_bad_config_values_are_named(ckpt, change, message):
    edit_config(ckpt, **change)
    with pytest.raises(ValueError, match=message):
        load_model(ckpt)


def test_missing_mask_token_id_is_named():
    raw = tiny_dream_config().to_dict()
    del raw["mask_token_id"]
    with pytest.raises(ValueError, match=r"required field 'mask_token_id' is missing"):
        DreamConfig.from_dict(raw)


def test_a_dream_7b_shaped_config_parses():
    """Dream-v0-Instruct-7B's config.json fields (values as its published code and
    the issue give them); transformers 5's ``rope_parameters`` spelling too."""
    raw = {
        "architectures": ["DreamModel"],
        "attention_dropout": 0.0,
        "auto_map": {
            "AutoConfig": "configuration_dream.DreamConfig",
            "AutoModel": "modeling_dream.DreamModel",
        },
        "bos_token_id": 151643,
        "eos_token_id": 151643,
        "hidden_act": "silu",
        "hidden_size": 3584,
        "initializer_range": 0.02,
        "intermediate_size": 18944,
        "mask_token_id": 151666,
        "max_position_embeddings": 131072,
        "max_window_layers": 28,
        "model_type": "Dream",
        "num_attention_heads": 28,
        "num_hidden_layers": 28,
        "num_key_value_heads": 4,
        "pad_token_id": 151643,
        "rms_norm_eps": 1e-06,
        "rope_scaling": None,
        "rope_theta": 1000000.0,
        "sliding_window": None,
        "tie_word_embeddings": False,
        "torch_dtype": "bfloat16",
        "use_cache": False,
        "use_sliding_window": False,
        "vocab_size": 152064,
    }
    cfg = DreamConfig.from_dict(raw)
    assert (cfg.head_dim, cfg.n_heads, cfg.n_kv_heads, cfg.n_layers) == (128, 28, 4, 28)
    assert (cfg.mask_token_id, cfg.rope_theta) == (151666, 1e6)
    assert (cfg.embedding_size, cfg.max_sequence_length) == (152064, 131072)
    del raw["rope_theta"]
    raw["rope_parameters"] = {"rope_type": "default", "rope_theta": 1e6}
    assert DreamConfig.from_dict(raw) == cfg


def test_the_engine_reads_dream_s_shifted_logits(tmp_path):
    # Before: LLM(DIR) generated from unshifted logits, silently not Dream's tokens.
    from maskkv_vllm.engine.llm import LLM

    ckpt = write_tiny_dream_checkpoint(tmp_path / "dream", seed=0)
    assert LLM(str(ckpt), device="cpu", num_pages=64).engine.model_runner.shift == 1


def test_dream_s_chat_renders_the_checkpoint_s_template(tmp_path):
    # Before: a Dream checkpoint's chat was rendered with LLaDA's pinned
    # Llama-3 template, silently the wrong turn format.
    from maskkv_vllm.models.loader import load_checkpoint

    ckpt = write_tiny_dream_checkpoint(tmp_path / "dream", seed=0)
    _, tok = load_checkpoint(ckpt)
    text = tok.render_chat([{"role": "user", "content": "Hi"}])
    assert text == "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    assert tok.encode_chat([{"role": "user", "content": "Hi"}]) == tok.encode(
        text, add_special_tokens=False
    )
    (ckpt / "tokenizer_config.json").write_text("{}")
    _, tok = load_checkpoint(ckpt)
    with pytest.raises(ValueError, match="no chat_template in .*tokenizer_config.json"):
        tok.render_chat([{"role": "user", "content": "Hi"}])
    with pytest.raises(ValueError, match="chat role 'robot'"):
        tok.render_chat([{"role": "robot", "content": "Hi"}])
