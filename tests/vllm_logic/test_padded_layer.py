"""``PaddedLayer``: a vLLM layer's flat-token pieces seen as the plain models'
(B, T, D) layer pieces, on plain torch (no vLLM needed)."""

from __future__ import annotations

import torch
from torch import nn

from maskkv_vllm.models.rope import apply_rope, rope_cos_sin, rope_inv_freq
from maskkv_vllm.vllm_adapter.worker.diffusion_lm import PaddedLayer

HQ, HKV, D, DM = 4, 2, 8, 32


class FlatLayer(nn.Module):
    """The flat-token interface of our vLLM layers, one rank."""

    def __init__(self, keep_weight: bool = True) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.layer, self.num_heads, self.num_kv_heads = 3, HQ, HKV
        self.qkv_proj = nn.Linear(DM, (HQ + 2 * HKV) * D, bias=True)
        self.o = nn.Linear(HQ * D, DM)
        self.mlp = nn.Linear(DM, DM)
        if not keep_weight:  # as vLLM's CPU GEMMs leave a repacked layer
            w, b = self.qkv_proj.weight.detach().clone(), self.qkv_proj.bias
            self.fused = lambda x: torch.nn.functional.linear(x, w, b)
            self.qkv_proj.weight = nn.Parameter(torch.empty(0))
        else:
            self.fused = self.qkv_proj

    def norm_in(self, x):
        return 2 * x

    def fused_qkv(self, x):
        return self.fused(self.norm_in(x))

    def out_proj(self, o):
        return self.o(o)

    def ffn(self, x):
        return self.mlp(x)


def test_pieces_reshape_the_flat_layer_s_outputs():
    layer = FlatLayer()
    p = PaddedLayer(layer)
    x = torch.randn(2, 5, DM)
    cos, sin = rope_cos_sin(torch.arange(10).view(2, 5), rope_inv_freq(D, 1e4, "cpu"))
    q, k, v = p.qkv(x, cos, sin)
    flat = layer.fused_qkv(x.reshape(10, DM)).view(2, 5, -1)
    want_q = flat[..., : HQ * D].view(2, 5, HQ, D).transpose(1, 2)
    want_v = flat[..., (HQ + HKV) * D :].view(2, 5, HKV, D).transpose(1, 2)
    torch.testing.assert_close(q, apply_rope(want_q, cos, sin))
    torch.testing.assert_close(v, want_v)
    assert k.shape == (2, HKV, 5, D)
    o = torch.randn(2, HQ, 5, D)
    want_o = layer.o(o.transpose(1, 2).reshape(2, 5, HQ * D))
    torch.testing.assert_close(p.attn_proj(o), want_o)
    torch.testing.assert_close(p.ffn(x), layer.mlp(x))
    assert p.layer == 3


def test_values_from_the_v_rows_alone_equal_the_fused_projection_s():
    x = torch.randn(2, 5, DM)
    plain = PaddedLayer(FlatLayer())
    plain._fused = None  # the V rows alone: the fused path is not taken
    sliced = plain.value(x)
    fused = PaddedLayer(FlatLayer(keep_weight=False)).value(x)  # whole projection
    torch.testing.assert_close(sliced, fused)
    torch.testing.assert_close(sliced, PaddedLayer(FlatLayer()).qkv(x, *_unit(x))[2])


def _unit(x):
    cos = torch.ones(x.shape[0], 1, x.shape[1], D)
    return cos, torch.zeros_like(cos)
