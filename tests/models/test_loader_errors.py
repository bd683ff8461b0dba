"""Every malformed checkpoint fails with an error that names the problem."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from maskkv_vllm.models.llada_config import LLaDAConfig
from maskkv_vllm.models.loader import load_checkpoint, load_model, resolve_dtype
from maskkv_vllm.models.tiny import write_tiny_checkpoint


@pytest.fixture
def ckpt(tmp_path):
    return write_tiny_checkpoint(tmp_path / "ckpt", seed=0, n_layers=1)


def rewrite_weights(ckpt, edit):
    path = ckpt / "model.safetensors"
    tensors = load_file(str(path))
    edit(tensors)
    save_file(tensors, str(path))


def edit_config(ckpt, **changes):
    path = ckpt / "config.json"
    raw = json.loads(path.read_text())
    raw.update(changes)
    path.write_text(json.dumps(raw))


def test_missing_tensor_is_named(ckpt):
    rewrite_weights(ckpt, lambda t: t.pop("model.transformer.blocks.0.up_proj.weight"))
    with pytest.raises(
        ValueError, match=r"missing tensors: .*blocks\.0\.up_proj\.weight"
    ):
        load_model(ckpt)


def test_unexpected_tensor_is_named(ckpt):
    def add(t):
        t["model.layers.0.self_attn.q_proj.weight"] = torch.zeros(2, 2)

    rewrite_weights(ckpt, add)
    with pytest.raises(
        ValueError, match=r"unexpected tensors: model\.layers\.0\.self_attn"
    ):
        load_model(ckpt)


def test_wrong_shape_is_named(ckpt):
    def shrink(t):
        t["model.transformer.blocks.0.k_proj.weight"] = torch.zeros(64, 128)

    rewrite_weights(ckpt, shrink)
    with pytest.raises(
        ValueError,
        match=r"blocks\.0\.k_proj\.weight has shape \(64, 128\), expected \(128, 128\)",
    ):
        load_model(ckpt)


def test_pickle_weights_are_refused(ckpt):
    state = load_file(str(ckpt / "model.safetensors"))
    (ckpt / "model.safetensors").unlink()
    torch.save(state, ckpt / "pytorch_model.bin")
    with pytest.raises(ValueError, match=r"only pickle weights \(pytorch_model\.bin\)"):
        load_model(ckpt)


def test_index_naming_a_pickle_shard_is_refused(tmp_path):
    ckpt = write_tiny_checkpoint(tmp_path / "s", seed=0, n_layers=1, shards=2)
    index = ckpt / "model.safetensors.index.json"
    raw = json.loads(index.read_text())
    name = next(iter(raw["weight_map"]))
    raw["weight_map"][name] = "pytorch_model-00001.bin"
    index.write_text(json.dumps(raw))
    with pytest.raises(ValueError, match=r"non-safetensors weight file: pytorch_model"):
        load_model(ckpt)


def test_index_naming_a_missing_shard(tmp_path):
    ckpt = write_tiny_checkpoint(tmp_path / "s", seed=0, n_layers=1, shards=2)
    (ckpt / "model-00002-of-00002.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match=r"model-00002-of-00002\.safetensors"):
        load_model(ckpt)


def test_no_weights_at_all(ckpt):
    (ckpt / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="no model.safetensors"):
        load_model(ckpt)


def test_missing_directory_and_config(tmp_path, ckpt):
    with pytest.raises(FileNotFoundError, match="does-not-exist"):
        load_model(tmp_path / "does-not-exist")
    (ckpt / "config.json").unlink()
    with pytest.raises(FileNotFoundError, match="config.json"):
        load_model(ckpt)


@pytest.mark.parametrize(
    "change, message",
    [
        ({"activation_type": "gelu"}, r"activation_type='gelu' is not supported"),
        ({"alibi": True}, r"alibi=True is not supported"),
        ({"layer_norm_type": "default"}, r"layer_norm_type='default'"),
        ({"model_type": "llama"}, r"model_type='llama'"),
        ({"n_layers": 0}, r"n_layers=0 must be positive"),
        ({"d_model": -128}, r"d_model=-128 must be positive"),
        ({"n_kv_heads": 3}, r"n_heads=4 is not a multiple of n_kv_heads=3"),
        ({"mask_token_id": 9999}, r"mask_token_id=9999 is outside"),
        ({"mask_token_id": 257}, r"mask_token_id and pad_token_id are both 257"),
        ({"n_heads": "4"}, r"n_heads='4' is not an integer"),
        ({"rope_full_precision": False}, r"rope_full_precision=False"),
    ],
)
def test_bad_config_values(ckpt, change, message):
    edit_config(ckpt, **change)
    with pytest.raises(ValueError, match=message):
        load_model(ckpt)


def test_missing_required_config_field():
    with pytest.raises(ValueError, match=r"required field 'mask_token_id' is missing"):
        LLaDAConfig.from_dict(
            {"d_model": 8, "n_heads": 2, "n_layers": 1, "vocab_size": 9}
        )


def test_config_not_json(ckpt):
    (ckpt / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        load_model(ckpt)


def test_bad_dtype_and_rope_scaling(ckpt):
    with pytest.raises(ValueError, match=r"dtype='float8'"):
        resolve_dtype("float8")
    with pytest.raises(ValueError, match=r"rope_scaling=0"):
        load_model(ckpt, rope_scaling=0)


def test_tensor_in_two_shards(tmp_path):
    ckpt = write_tiny_checkpoint(tmp_path / "s", seed=0, n_layers=1, shards=2)
    first = ckpt / "model-00001-of-00002.safetensors"
    second = ckpt / "model-00002-of-00002.safetensors"
    t2 = load_file(str(second))
    t2.update(load_file(str(first)))
    save_file(t2, str(second))
    with pytest.raises(ValueError, match="appears twice"):
        load_model(ckpt)


def test_real_llada_8b_config_parses():
    """LLaDA-8B's published config.json (llada.md §2) parses to the right shape."""
    raw = {
        "activation_type": "silu",
        "alibi": False,
        "alibi_bias_max": 8.0,
        "architectures": ["LLaDAModelLM"],
        "attention_dropout": 0.0,
        "attention_layer_norm": False,
        "attention_layer_norm_with_affine": True,
        "auto_map": {"AutoConfig": "configuration_llada.LLaDAConfig"},
        "bias_for_layer_norm": False,
        "block_group_size": 1,
        "block_type": "llama",
        "d_model": 4096,
        "embedding_dropout": 0.0,
        "embedding_size": 126464,
        "eos_token_id": 126081,
        "flash_attention": False,
        "include_bias": False,
        "include_qkv_bias": False,
        "init_cutoff_factor": None,
        "init_device": "meta",
        "init_fn": "mitchell",
        "init_std": 0.02,
        "input_emb_norm": False,
        "layer_norm_type": "rms",
        "layer_norm_with_affine": True,
        "mask_token_id": 126336,
        "max_sequence_length": 4096,
        "mlp_hidden_size": 12288,
        "mlp_ratio": 4,
        "model_type": "llada",
        "multi_query_attention": None,
        "n_heads": 32,
        "n_kv_heads": 32,
        "n_layers": 32,
        "pad_token_id": 126081,
        "precision": "amp_bf16",
        "residual_dropout": 0.0,
        "rms_norm_eps": 1e-05,
        "rope": True,
        "rope_full_precision": True,
        "rope_theta": 500000.0,
        "scale_logits": False,
        "transformers_version": "4.46.3",
        "use_cache": False,
        "vocab_size": 126464,
        "weight_tying": False,
    }
    cfg = LLaDAConfig.from_dict(raw)
    assert (cfg.head_dim, cfg.n_kv_heads, cfg.intermediate_size) == (128, 32, 12288)
    assert (cfg.mask_token_id, cfg.eos_token_id, cfg.rope_theta) == (
        126336,
        126081,
        5e5,
    )


def test_copy_of_checkpoint_loads(tmp_path, ckpt):
    copy = tmp_path / "copy"
    shutil.copytree(ckpt, copy)
    assert load_model(copy).config == load_model(ckpt).config


# -- issue 14, item 7: one-line errors instead of tracebacks and hangs --------------


@pytest.mark.parametrize(
    "damage",
    [
        lambda data: b"",
        lambda data: b"\x00" * 7,
        lambda data: b"garbage that is not safetensors",
        lambda data: data[: len(data) // 2],  # truncated
    ],
)
def test_an_unreadable_safetensors_file_is_named(ckpt, damage):
    path = ckpt / "model.safetensors"
    path.write_bytes(damage(path.read_bytes()))
    with pytest.raises(
        ValueError, match=r"model\.safetensors is not a readable safetensors"
    ):
        load_model(ckpt)


@pytest.mark.parametrize("content", ["not json at all", '{"model": {"type": "Nope"}}'])
def test_a_bad_tokenizer_json_is_named(ckpt, content):
    (ckpt / "tokenizer.json").write_text(content)
    with pytest.raises(
        ValueError, match=r"tokenizer\.json is not a valid tokenizer\.json"
    ):
        load_checkpoint(ckpt)


def test_a_config_that_is_a_json_list_is_named(ckpt):
    (ckpt / "config.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match="must hold a JSON object, not a list"):
        load_model(ckpt)


def test_a_million_layers_is_refused_before_building_them(ckpt):
    edit_config(ckpt, n_layers=1_000_000)
    with pytest.raises(
        ValueError, match="n_layers=1000000 but the weights hold 1 blocks"
    ):
        load_model(ckpt)


def test_an_index_naming_a_file_outside_the_model_directory_is_refused(tmp_path, ckpt):
    shutil.copy(ckpt / "model.safetensors", tmp_path / "outside.safetensors")
    names = load_file(str(ckpt / "model.safetensors")).keys()
    index = {"weight_map": dict.fromkeys(names, "../outside.safetensors")}
    (ckpt / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(
        ValueError, match=r"names \.\./outside\.safetensors, which is not"
    ):
        load_model(ckpt)


def test_a_device_that_is_not_one_is_named(ckpt):
    with pytest.raises(ValueError, match="device='gpu' is not a torch device"):
        load_model(ckpt, device="gpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_cuda_on_a_cpu_torch_says_so(ckpt):
    with pytest.raises(
        ValueError, match=r"device='cuda' but this torch .* sees no CUDA"
    ):
        load_model(ckpt, device="cuda")
