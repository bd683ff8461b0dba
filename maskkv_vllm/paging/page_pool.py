"""A pool of fixed-size KV pages, each holding ``page_size`` tokens of ONE KV head of
ONE layer, shared by every layer, head and request.

Head-granular pages are what let per-head eviction give memory back: a head that keeps
fewer tokens simply holds fewer pages.
"""

from __future__ import annotations

from collections import Counter, deque

NULL_PAGE_ID = 0
"""Page 0 is never handed out: padding slots point at it, as in vLLM."""


class NoFreePagesError(RuntimeError):
    """The pool cannot satisfy an allocation (callers queue or preempt on it)."""


class PagePool:
    """Free list, reference counts and usage counters of the page pool.

    Args:
        num_pages: pages in the pool, the null page included.
        page_size: token slots per page.
    """

    def __init__(self, num_pages: int, page_size: int) -> None:
        if not isinstance(num_pages, int) or num_pages < 2:
            raise ValueError(f"num_pages={num_pages!r} must be an int >= 2")
        if not isinstance(page_size, int) or page_size <= 0:
            raise ValueError(f"page_size={page_size!r} must be a positive int")
        self.num_pages = num_pages
        self.page_size = page_size
        self.ref_cnt = [0] * num_pages
        self.ref_cnt[NULL_PAGE_ID] = 1  # permanently held
        self.free_page_queue: deque[int] = deque(range(1, num_pages))
        self.max_used_pages = 0

    @property
    def num_usable_pages(self) -> int:
        """Pages that can ever be allocated (all but the null page)."""
        return self.num_pages - 1

    @property
    def num_free_pages(self) -> int:
        return len(self.free_page_queue)

    @property
    def num_used_pages(self) -> int:
        return self.num_usable_pages - self.num_free_pages

    def pages_for(self, num_tokens: int) -> int:
        """Pages needed to hold ``num_tokens`` slots."""
        return -(-num_tokens // self.page_size)

    def can_allocate(self, num_pages: int) -> bool:
        return num_pages <= self.num_free_pages

    def allocate(self, num_pages: int) -> list[int]:
        """Take ``num_pages`` pages from the head of the free list (ref_cnt 1)."""
        if num_pages < 0:
            raise ValueError(f"num_pages={num_pages} must be >= 0")
        if not self.can_allocate(num_pages):
            raise NoFreePagesError(
                f"need {num_pages} KV pages but only {self.num_free_pages} of "
                f"{self.num_usable_pages} are free"
            )
        ids = [self.free_page_queue.popleft() for _ in range(num_pages)]
        for page_id in ids:
            self.ref_cnt[page_id] = 1
        self.max_used_pages = max(self.max_used_pages, self.num_used_pages)
        return ids

    def free(self, page_ids: list[int]) -> None:
        """Drop one reference of each page; pages at zero go to the tail of the list."""
        # Checked as a whole first, so a bad list changes nothing.
        for page_id, count in Counter(page_ids).items():
            self._check_held(page_id, count)
        for page_id in page_ids:
            self.ref_cnt[page_id] -= 1
            if self.ref_cnt[page_id] == 0:
                self.free_page_queue.append(page_id)

    def _check_held(self, page_id: int, count: int = 1) -> None:
        if page_id == NULL_PAGE_ID:
            raise ValueError("the null page cannot be freed or shared")
        if not 0 < page_id < self.num_pages:
            raise ValueError(f"page_id={page_id} is outside [1, {self.num_pages})")
        if self.ref_cnt[page_id] < count:
            raise ValueError(
                f"page_id={page_id} holds {self.ref_cnt[page_id]} references, "
                f"cannot drop {count} (double free?)"
            )
