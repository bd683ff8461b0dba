"""The dense ``prefix`` cache: per-row prompt KV tensors and the attention over them."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from maskkv_vllm.kv_cache.prompt_cache import CacheKey
from maskkv_vllm.models.attention import dense_attention


@dataclass
class PromptKV:
    """Post-RoPE keys and values of one row's prompt, per layer.

    Keys are stored after RoPE at their absolute positions, so dropping tokens later
    never shifts the position a key was rotated for.
    """

    keys: list[torch.Tensor] = field(default_factory=list)
    """Per layer, (n_kv_heads, M, head_dim)."""
    values: list[torch.Tensor] = field(default_factory=list)
    """Per layer, (n_kv_heads, M, head_dim)."""

    @property
    def num_tokens(self) -> int:
        return self.keys[0].shape[1] if self.keys else 0

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.keys + self.values)


class CapturingAttention:
    """Dense attention over whole rows that also stores each row's prompt KV.

    Args:
        key_mask: (B, T) bool, True for real tokens.
        prompt_spans: per row, (start, end) columns of its prompt.
        stores: per row, the ``PromptKV`` that receives it.
    """

    def __init__(
        self,
        key_mask: torch.Tensor,
        prompt_spans: list[tuple[int, int]],
        stores: list[PromptKV],
    ) -> None:
        self.key_mask = key_mask
        self.prompt_spans = prompt_spans
        self.stores = stores

    def __call__(
        self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor
    ) -> torch.Tensor:
        pairs = zip(self.prompt_spans, self.stores, strict=True)
        for row, ((start, end), store) in enumerate(pairs):
            del store.keys[layer:], store.values[layer:]
            store.keys.append(k[row, :, start:end].clone())
            store.values.append(v[row, :, start:end].clone())
        return dense_attention(q, k, v, self.key_mask)


class CachedPromptAttention:
    """Canvas queries attend to their cached prompt KV plus the canvas's fresh KV.

    Args:
        prompts: per row, its ``PromptKV``.
        canvas_mask: (B, Tc) bool, True for real canvas slots.
    """

    def __init__(self, prompts: list[PromptKV], canvas_mask: torch.Tensor) -> None:
        self.prompts = prompts
        lengths = [p.num_tokens for p in prompts]
        width = max(lengths)
        device = canvas_mask.device
        cols = torch.arange(width, device=device)
        prompt_mask = cols[None, :] < torch.tensor(lengths, device=device)[:, None]
        self.key_mask = torch.cat([prompt_mask, canvas_mask], dim=1)  # (B, P + Tc)
        self.width = width

    def _stack(self, tensors: list[torch.Tensor]) -> torch.Tensor:
        """(B, Hkv, width, d), right-padded with zeros (masked out)."""
        if len(tensors) == 1:
            return tensors[0][None]
        h, _, d = tensors[0].shape
        out = tensors[0].new_zeros(len(tensors), h, self.width, d)
        for row, t in enumerate(tensors):
            out[row, :, : t.shape[1]] = t
        return out

    def __call__(
        self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor
    ) -> torch.Tensor:
        pk = self._stack([p.keys[layer] for p in self.prompts])
        pv = self._stack([p.values[layer] for p in self.prompts])
        keys = torch.cat([pk, k], dim=2)
        values = torch.cat([pv, v], dim=2)
        return dense_attention(q, keys, values, self.key_mask)


class DensePromptCache:
    """``prefix`` mode: one ``PromptKV`` per row, in ordinary tensors."""

    supports_eviction = False
    supports_canvas_cache = False

    page_pool = None

    def __init__(self) -> None:
        self.entries: dict[CacheKey, PromptKV] = {}

    def num_pages(self, key: CacheKey) -> int:
        return 0

    def pool_stats(self) -> None:
        return None

    def capturing_attention(self, keys, batch, evictions):
        assert not any(evictions), "the dense prefix cache does not evict"
        for key in keys:
            self.entries[key] = PromptKV()
        stores = [self.entries[k] for k in keys]
        return CapturingAttention(batch.key_mask, batch.prompt_spans, stores)

    def cached_attention(self, keys, canvas_mask):
        return CachedPromptAttention([self.entries[k] for k in keys], canvas_mask)

    def has(self, key: CacheKey) -> bool:
        return key in self.entries

    def free(self, key: CacheKey) -> None:
        self.entries.pop(key, None)

    def nbytes(self, key: CacheKey) -> int:
        entry = self.entries.get(key)
        return entry.nbytes if entry else 0

    def num_entries(self, key: CacheKey) -> int:
        entry = self.entries.get(key)
        if not entry or not entry.keys:
            return 0
        return len(entry.keys) * entry.keys[0].shape[0] * entry.num_tokens
