"""Page tensors on the model's device: K, V and the absolute position of every slot."""

from __future__ import annotations

import torch


class PagedKVStore:
    """Storage behind a ``BlockPool``: page ``i`` of every tensor is block id ``i``.

    Args:
        num_blocks: pages, the null page included.
        block_size: token slots per page.
        head_dim: size of one key/value vector.
        dtype, device: those of the model.
    """

    POSITION_DTYPE = torch.int32

    def __init__(
        self,
        num_blocks: int,
        block_size: int,
        head_dim: int,
        dtype: torch.dtype,
        device: torch.device | str,
    ) -> None:
        self.num_blocks, self.block_size, self.head_dim = (
            num_blocks,
            block_size,
            head_dim,
        )
        shape = (num_blocks, block_size, head_dim)
        self.k_cache = torch.zeros(shape, dtype=dtype, device=device)
        """(num_blocks, block_size, head_dim) post-RoPE keys."""
        self.v_cache = torch.zeros(shape, dtype=dtype, device=device)
        """(num_blocks, block_size, head_dim) values."""
        self.positions = torch.full(
            (num_blocks, block_size), -1, dtype=self.POSITION_DTYPE, device=device
        )
        """(num_blocks, block_size) absolute token position of each slot."""

    @staticmethod
    def bytes_per_block(block_size: int, head_dim: int, dtype: torch.dtype) -> int:
        """Bytes of one page: K and V slots plus their int32 positions."""
        itemsize = torch.empty((), dtype=dtype).element_size()
        return block_size * (2 * head_dim * itemsize + 4)

    @classmethod
    def num_blocks_for(
        cls, memory_bytes: int, block_size: int, head_dim: int, dtype: torch.dtype
    ) -> int:
        """Pages that fit in ``memory_bytes``."""
        return memory_bytes // cls.bytes_per_block(block_size, head_dim, dtype)

    @property
    def page_bytes(self) -> int:
        return self.bytes_per_block(self.block_size, self.head_dim, self.k_cache.dtype)

    def write(
        self, slots: torch.Tensor, k: torch.Tensor, v: torch.Tensor, pos: torch.Tensor
    ) -> None:
        """Scatter tokens into flat slots (block_id * block_size + offset).

        Args:
            slots: (N,) int64 flat slot ids.
            k, v: (N, head_dim).
            pos: (N,) absolute positions.
        """
        self.k_cache.view(-1, self.head_dim)[slots] = k.to(self.k_cache.dtype)
        self.v_cache.view(-1, self.head_dim)[slots] = v.to(self.v_cache.dtype)
        self.positions.view(-1)[slots] = pos.to(self.POSITION_DTYPE)

    def read(
        self, slots: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(k, v, positions) of flat slots of any shape S: (S, d), (S, d), (S,)."""
        flat = slots.reshape(-1)
        k = self.k_cache.view(-1, self.head_dim)[flat]
        v = self.v_cache.view(-1, self.head_dim)[flat]
        p = self.positions.view(-1)[flat]
        shape = tuple(slots.shape)
        d = self.head_dim
        return k.view(*shape, d), v.view(*shape, d), p.view(shape)
