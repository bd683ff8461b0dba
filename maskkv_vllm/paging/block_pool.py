"""A pool of fixed-size KV pages, each holding ``block_size`` tokens of ONE KV head of
ONE layer, shared by every layer, head and request.

Head-granular pages are what let per-head eviction give memory back: a head that keeps
fewer tokens simply holds fewer pages.
"""

from __future__ import annotations

from collections import Counter, deque

NULL_BLOCK_ID = 0
"""Block 0 is never handed out: padding slots point at it, as in vLLM."""


class NoFreeBlocksError(RuntimeError):
    """The pool cannot satisfy an allocation (callers queue or preempt on it)."""


class BlockPool:
    """Free list, reference counts and usage counters of the page pool.

    Args:
        num_blocks: pages in the pool, the null block included.
        block_size: token slots per page.
    """

    def __init__(self, num_blocks: int, block_size: int) -> None:
        if not isinstance(num_blocks, int) or num_blocks < 2:
            raise ValueError(f"num_blocks={num_blocks!r} must be an int >= 2")
        if not isinstance(block_size, int) or block_size <= 0:
            raise ValueError(f"block_size={block_size!r} must be a positive int")
        self.num_blocks = num_blocks
        self.block_size = block_size
        self.ref_cnt = [0] * num_blocks
        self.ref_cnt[NULL_BLOCK_ID] = 1  # permanently held
        self.free_block_queue: deque[int] = deque(range(1, num_blocks))
        self.max_used_blocks = 0

    @property
    def num_usable_blocks(self) -> int:
        """Blocks that can ever be allocated (all but the null block)."""
        return self.num_blocks - 1

    @property
    def num_free_blocks(self) -> int:
        return len(self.free_block_queue)

    @property
    def num_used_blocks(self) -> int:
        return self.num_usable_blocks - self.num_free_blocks

    def blocks_for(self, num_tokens: int) -> int:
        """Pages needed to hold ``num_tokens`` slots."""
        return -(-num_tokens // self.block_size)

    def can_allocate(self, num_blocks: int) -> bool:
        return num_blocks <= self.num_free_blocks

    def allocate(self, num_blocks: int) -> list[int]:
        """Take ``num_blocks`` pages from the head of the free list (ref_cnt 1)."""
        if num_blocks < 0:
            raise ValueError(f"num_blocks={num_blocks} must be >= 0")
        if not self.can_allocate(num_blocks):
            raise NoFreeBlocksError(
                f"need {num_blocks} KV pages but only {self.num_free_blocks} of "
                f"{self.num_usable_blocks} are free"
            )
        ids = [self.free_block_queue.popleft() for _ in range(num_blocks)]
        for block_id in ids:
            self.ref_cnt[block_id] = 1
        self.max_used_blocks = max(self.max_used_blocks, self.num_used_blocks)
        return ids

    def free(self, block_ids: list[int]) -> None:
        """Drop one reference of each page; pages at zero go to the tail of the list."""
        # Checked as a whole first, so a bad list changes nothing.
        for block_id, count in Counter(block_ids).items():
            self._check_held(block_id, count)
        for block_id in block_ids:
            self.ref_cnt[block_id] -= 1
            if self.ref_cnt[block_id] == 0:
                self.free_block_queue.append(block_id)

    def _check_held(self, block_id: int, count: int = 1) -> None:
        if block_id == NULL_BLOCK_ID:
            raise ValueError("the null block cannot be freed or shared")
        if not 0 < block_id < self.num_blocks:
            raise ValueError(f"block_id={block_id} is outside [1, {self.num_blocks})")
        if self.ref_cnt[block_id] < count:
            raise ValueError(
                f"block_id={block_id} holds {self.ref_cnt[block_id]} references, "
                f"cannot drop {count} (double free?)"
            )
