"""Key and value pages, and one layer of a request written into them.

Both engines keep the prompt KV the same way: ``PageStore`` holds the K and V
tensors (page ``i`` of both belongs to one (layer, KV head) of one request), a
torch-free ``PageTableManager`` decides which pages a layer's heads get, and
``write_layer`` puts a layer's kept entries there. The embedded engine's store
is allocated here (``PageStore.zeros``); vLLM's (``vllm_adapter.request_pages``)
is a view of vLLM's own KV cache tensor.
"""

from __future__ import annotations

from collections.abc import Hashable

import torch

from maskkv_vllm.kv_cache.page_table_tensors import head_slots
from maskkv_vllm.paging.page_table_manager import PageTableManager


class PageStore:
    """K and V pages of ``P`` slots of ``d`` each; page ``i`` of both is one page.

    Args:
        k_cache, v_cache: (num_pages, P, d) post-RoPE keys and values.
    """

    def __init__(self, k_cache: torch.Tensor, v_cache: torch.Tensor) -> None:
        if k_cache.shape != v_cache.shape or k_cache.dim() != 3:
            raise ValueError(
                f"k_cache {tuple(k_cache.shape)} and v_cache {tuple(v_cache.shape)} "
                "must both be (num_pages, page_size, head_dim)"
            )
        self.k_cache, self.v_cache = k_cache, v_cache
        self.num_pages, self.page_size, self.head_dim = k_cache.shape

    @classmethod
    def zeros(
        cls,
        num_pages: int,
        page_size: int,
        head_dim: int,
        dtype: torch.dtype,
        device: torch.device | str,
    ) -> PageStore:
        """A store of its own, zero-filled."""
        shape = (num_pages, page_size, head_dim)
        k = torch.zeros(shape, dtype=dtype, device=device)
        return cls(k, torch.zeros_like(k))

    @staticmethod
    def bytes_per_page(page_size: int, head_dim: int, dtype: torch.dtype) -> int:
        """Bytes of one page: its K and V slots."""
        itemsize = torch.empty((), dtype=dtype).element_size()
        return 2 * page_size * head_dim * itemsize

    @property
    def page_bytes(self) -> int:
        return self.bytes_per_page(self.page_size, self.head_dim, self.k_cache.dtype)

    def write(self, slots: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
        """Scatter tokens into flat slots (page * P + offset).

        Args:
            slots: (N,) int64 flat slot ids.
            k, v: (N, d).
        """
        d = self.head_dim
        self.k_cache.view(-1, d)[slots] = k.to(self.k_cache.dtype)
        self.v_cache.view(-1, d)[slots] = v.to(self.v_cache.dtype)


def write_layer(
    store: PageStore,
    manager: PageTableManager,
    request_id: Hashable,
    layer: int,
    k: torch.Tensor,
    v: torch.Tensor,
    lengths: list[int],
    page_map: torch.Tensor | None = None,
) -> None:
    """Store one layer of a request: the first ``lengths[h]`` rows of head h.

    The layer's pages are (re)allocated by ``manager``; what the layer held
    before goes back to its pool first.

    Args:
        k, v: (Hkv, N, d) post-RoPE keys and values.
        lengths: per KV head, the rows to keep, each in [0, N].
        page_map: (n,) int64 page id of the manager's pool -> page of ``store``
            (None: the same ids).

    Raises:
        ValueError: a length outside [0, N].
        NoFreePagesError: the pool is short; nothing of the layer is stored.
    """
    n = k.shape[1]
    if any(not 0 <= x <= n for x in lengths):
        raise ValueError(f"lengths {lengths} must lie in [0, {n}]")
    heads = manager.allocate_layer(request_id, layer, list(lengths))
    rows = [(h, x) for h, x in enumerate(lengths) if x]
    if not rows:
        return
    slots = []
    for h, x in rows:
        ids = torch.tensor(heads[h].page_ids, dtype=torch.long)
        ids = ids if page_map is None else page_map[ids]
        slots.append(head_slots(ids, x, store.page_size))
    store.write(
        torch.cat(slots).to(store.k_cache.device),
        torch.cat([k[h, :x] for h, x in rows]),
        torch.cat([v[h, :x] for h, x in rows]),
    )
