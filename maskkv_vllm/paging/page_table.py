"""Which pages each request holds per (layer, KV head), and how many tokens."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field


@dataclass
class HeadPages:
    """The pages of one (request, layer, KV head); tokens fill them in order."""

    page_ids: list[int] = field(default_factory=list)
    num_tokens: int = 0


class RequestPageTable:
    """Per-(layer, KV head) page lists of one request.

    Args:
        num_layers: model layers.
        num_kv_heads: KV heads per layer.
    """

    def __init__(self, num_layers: int, num_kv_heads: int) -> None:
        self.heads = [
            [HeadPages() for _ in range(num_kv_heads)] for _ in range(num_layers)
        ]

    def layer(self, layer: int) -> list[HeadPages]:
        return self.heads[layer]

    def all_page_ids(self) -> list[int]:
        return [b for row in self.heads for h in row for b in h.page_ids]

    @property
    def num_pages(self) -> int:
        return sum(len(h.page_ids) for row in self.heads for h in row)

    def tokens_per_head(self) -> list[list[int]]:
        """(num_layers, num_kv_heads) token counts."""
        return [[h.num_tokens for h in row] for row in self.heads]


def pages_for(tokens_per_head: Iterable[int], page_size: int) -> int:
    """Head-pages that hold the given token counts, one head's tokens per page.

    Example: tokens (70, 3, 0) with 32-slot pages -> 3 + 1 + 0 = 4 pages.
    """
    return sum(-(-n // page_size) for n in tokens_per_head)


def blocks_for_pages(num_pages: int, pages_per_block: int) -> int:
    """Blocks that hold ``num_pages`` head-pages when one block holds
    ``pages_per_block`` (vLLM: one block is one layer's KV heads, so
    ``pages_per_block`` = its KV heads). Example: 10 pages, 4 per block -> 3."""
    return -(-num_pages // pages_per_block)
