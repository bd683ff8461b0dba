"""Request page tables: 2 layers x 2 KV heads, pages of 4 slots, 12 pages."""

from __future__ import annotations

import pytest

from maskkv_vllm.paging.page_pool import NoFreePagesError, PagePool
from maskkv_vllm.paging.page_table_manager import PageTableManager


def make_manager(num_pages=12, page_size=4):
    return PageTableManager(PagePool(num_pages, page_size), 2, 2)


def page_ids(mgr, rid, layer):
    return [h.page_ids for h in mgr.tables[rid].layer(layer)]


def test_allocate_free_reuse():
    mgr = make_manager()
    # Layer 0 keeps 6 and 3 tokens (2 + 1 pages), layer 1 keeps 0 and 6 (0 + 2).
    mgr.allocate_layer("a", 0, [6, 3])
    mgr.allocate_layer("a", 1, [0, 6])
    assert page_ids(mgr, "a", 0) == [[1, 2], [3]]
    assert page_ids(mgr, "a", 1) == [[], [4, 5]]
    assert mgr.tables["a"].tokens_per_head() == [[6, 3], [0, 6]]
    assert list(mgr.pool.free_page_queue) == [6, 7, 8, 9, 10, 11]
    # Request b takes the free list from its head.
    mgr.allocate_layer("b", 0, [4, 8])
    assert page_ids(mgr, "b", 0) == [[6], [7, 8]]
    assert mgr.free("a") == 5
    assert list(mgr.pool.free_page_queue) == [9, 10, 11, 1, 2, 3, 4, 5]
    assert mgr.free("a") == 0  # idempotent
    mgr.free("b")
    assert mgr.pool.num_free_pages == 11


def test_rewriting_a_layer_frees_its_old_pages_first():
    mgr = make_manager()
    mgr.allocate_layer("a", 0, [8, 8])
    mgr.allocate_layer("a", 0, [4, 4])
    assert page_ids(mgr, "a", 0) == [[5], [6]]
    assert mgr.pool.num_used_pages == 2


def test_short_pool_takes_nothing():
    mgr = make_manager(num_pages=6)
    mgr.allocate_layer("a", 0, [8, 8])  # 4 of 5 pages
    with pytest.raises(NoFreePagesError, match="need 2 KV pages but only 1"):
        mgr.allocate_layer("a", 1, [4, 4])
    assert mgr.pool.num_free_pages == 1
    assert mgr.tables["a"].tokens_per_head() == [[8, 8], [0, 0]]


def test_bad_arguments():
    mgr = make_manager()
    with pytest.raises(ValueError, match="layer=2 is outside"):
        mgr.allocate_layer("a", 2, [1, 1])
    with pytest.raises(ValueError, match="got 3 token counts for 2 KV heads"):
        mgr.allocate_layer("a", 0, [1, 1, 1])
    with pytest.raises(ValueError, match="negative token count"):
        mgr.allocate_layer("a", 0, [1, -1])
    mgr.allocate_layer("a", 0, [4, 4])
    with pytest.raises(ValueError, match="kv_head=2 is outside"):
        mgr.head("a", 0, 2)
    with pytest.raises(KeyError, match="request 'zzz' holds no KV pages"):
        mgr.head("zzz", 0, 0)
