"""The model against an independent, deliberately naive implementation."""

from __future__ import annotations

import math

import pytest
import torch

from maskkv_vllm.models.llada import LLaDAModel
from maskkv_vllm.models.loader import load_model
from maskkv_vllm.models.tiny import (
    random_state_dict,
    tiny_config,
    write_tiny_checkpoint,
)


def naive_logits(sd, cfg, ids, positions, theta):
    """LLaDA forward for one sequence with explicit per-head, per-token loops."""
    p = "model.transformer."

    def rms(x, w):
        return w * (x / torch.sqrt((x * x).mean(-1, keepdim=True) + cfg.rms_norm_eps))

    def rope(vec, pos):
        half = cfg.head_dim // 2
        out = torch.empty_like(vec)
        for i in range(half):
            # LLaDA builds inv_freq and the angles in fp32 (rope_full_precision).
            inv_freq = torch.tensor(1.0 / theta ** (2.0 * i / cfg.head_dim))
            angle = torch.tensor(float(pos)) * inv_freq
            c, s = torch.cos(angle), torch.sin(angle)
            out[i] = vec[i] * c - vec[i + half] * s
            out[i + half] = vec[i + half] * c + vec[i] * s
        return out

    x = sd[p + "wte.weight"][ids]
    t, hd = len(ids), cfg.head_dim
    group = cfg.n_heads // cfg.n_kv_heads
    for layer in range(cfg.n_layers):
        b = f"{p}blocks.{layer}."
        a = rms(x, sd[b + "attn_norm.weight"])
        q, k, v = (a @ sd[b + n + ".weight"].T for n in ("q_proj", "k_proj", "v_proj"))
        out = torch.zeros(t, cfg.d_model)
        for h in range(cfg.n_heads):
            kvh = h // group
            qs = [rope(q[i, h * hd : (h + 1) * hd], positions[i]) for i in range(t)]
            ks = [rope(k[j, kvh * hd : (kvh + 1) * hd], positions[j]) for j in range(t)]
            vs = v[:, kvh * hd : (kvh + 1) * hd]
            for i in range(t):
                scores = torch.stack([qs[i] @ ks[j] for j in range(t)]) / math.sqrt(hd)
                out[i, h * hd : (h + 1) * hd] = torch.softmax(scores, 0) @ vs
        x = x + out @ sd[b + "attn_out.weight"].T
        f = rms(x, sd[b + "ff_norm.weight"])
        gate = f @ sd[b + "ff_proj.weight"].T
        up = f @ sd[b + "up_proj.weight"].T
        x = x + (gate * torch.sigmoid(gate) * up) @ sd[b + "ff_out.weight"].T
    head = sd[p + "wte.weight"] if cfg.weight_tying else sd[p + "ff_out.weight"]
    return rms(x, sd[p + "ln_f.weight"]) @ head.T


def model_from(cfg, sd, rope_scaling=1.0):
    model = LLaDAModel(cfg, rope_scaling=rope_scaling)
    model.load_state_dict(sd)
    return model.eval()


@pytest.mark.parametrize(
    "overrides",
    [{}, {"n_kv_heads": 2}, {"n_kv_heads": 1, "n_layers": 1}, {"weight_tying": True}],
    ids=["mha", "gqa2", "mqa", "tied"],
)
def test_logits_match_naive_loops(overrides):
    cfg = tiny_config(**overrides)
    # Unit-scale weights keep activations O(1), so fp32 rounding stays below 1e-5.
    sd = random_state_dict(cfg, seed=3, scale=1.0)
    ids = torch.tensor([256, 72, 101, 108, 261, 261, 261])
    # Non-contiguous absolute positions, as after eviction.
    positions = torch.tensor([0, 1, 2, 5, 9, 10, 40])
    got = model_from(cfg, sd).logits(model_from(cfg, sd)(ids[None], positions[None]))[0]
    want = naive_logits(sd, cfg, ids, positions.tolist(), cfg.rope_theta)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_rope_scaling_multiplies_theta():
    cfg = tiny_config(n_layers=1)
    sd = random_state_dict(cfg, seed=4, scale=1.0)
    ids = torch.tensor([256, 40, 41, 261])
    positions = torch.tensor([0, 100, 200, 300])
    model = model_from(cfg, sd, rope_scaling=4.0)
    got = model.logits(model(ids[None], positions[None]))[0]
    want = naive_logits(sd, cfg, ids, positions.tolist(), cfg.rope_theta * 4.0)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    plain = model_from(cfg, sd)
    assert not torch.allclose(plain.logits(plain(ids[None], positions[None]))[0], got)


def test_gqa_shapes(gqa):
    model, _ = gqa
    block = model.blocks[0]
    assert block.k_proj.weight.shape == (2 * 32, 128)
    assert block.q_proj.weight.shape == (128, 128)
    x = torch.randn(3, 5, 128)
    pos = torch.arange(5).expand(3, 5)
    from maskkv_vllm.models.rope import rope_cos_sin, rope_inv_freq

    cos, sin = rope_cos_sin(pos, rope_inv_freq(32, 5e5, None))
    q, k, v = block.qkv(x, cos, sin)
    assert q.shape == (3, 4, 5, 32)
    assert k.shape == v.shape == (3, 2, 5, 32)


def test_checkpoint_round_trip(tmp_path):
    cfg = tiny_config()
    sd = random_state_dict(cfg, seed=7)
    write_tiny_checkpoint(tmp_path, seed=7)
    loaded = load_model(tmp_path)
    ids = torch.tensor([[256, 10, 20, 261, 261]])
    pos = torch.arange(5)[None]
    reference = model_from(cfg, sd)
    assert torch.equal(
        loaded.logits(loaded(ids, pos)), reference.logits(reference(ids, pos))
    )


def test_sharded_equals_single_file(tmp_path):
    single = load_model(write_tiny_checkpoint(tmp_path / "one", seed=5))
    sharded_dir = write_tiny_checkpoint(tmp_path / "three", seed=5, shards=3)
    assert len(list(sharded_dir.glob("model-*-of-00003.safetensors"))) == 3
    assert (sharded_dir / "model.safetensors.index.json").is_file()
    sharded = load_model(sharded_dir)
    for name, t in single.state_dict().items():
        assert torch.equal(t, sharded.state_dict()[name]), name


def test_same_seed_same_weights_other_seed_differs(tmp_path):
    a = write_tiny_checkpoint(tmp_path / "a", seed=9)
    b = write_tiny_checkpoint(tmp_path / "b", seed=9)
    c = write_tiny_checkpoint(tmp_path / "c", seed=10)
    assert (a / "model.safetensors").read_bytes() == (
        b / "model.safetensors"
    ).read_bytes()
    assert (a / "model.safetensors").read_bytes() != (
        c / "model.safetensors"
    ).read_bytes()


def test_bfloat16_load_runs_close_to_fp32(tiny_dir):
    fp32 = load_model(tiny_dir)
    bf16 = load_model(tiny_dir, dtype="bfloat16")
    assert bf16.blocks[0].q_proj.weight.dtype == torch.bfloat16
    ids = torch.tensor([[256, 72, 105, 261, 261, 261]])
    pos = torch.arange(6)[None]
    want = fp32.logits(fp32(ids, pos))
    got = bf16.logits(bf16(ids, pos))
    assert got.dtype == torch.float32
    # bf16 keeps ~3 significant digits: logits stay close, the argmax mostly agrees.
    assert (got - want).abs().max() < 0.1 * want.abs().max()
    assert (got.argmax(-1) == want.argmax(-1)).float().mean() >= 0.8


def test_hf_standard_names(tiny):
    cfg = tiny[0].config
    assert (cfg.hidden_size, cfg.num_attention_heads, cfg.num_key_value_heads) == (
        128,
        4,
        4,
    )
    assert (cfg.num_hidden_layers, cfg.intermediate_size, cfg.head_dim) == (2, 256, 32)
    assert cfg.max_position_embeddings == 4096
