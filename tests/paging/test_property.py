"""Random allocate / free sequences never lose or share a page."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from maskkv_vllm.paging.page_pool import NULL_PAGE_ID, NoFreePagesError, PagePool
from maskkv_vllm.paging.page_table_manager import PageTableManager

LAYERS, HEADS, BLOCK, POOL = 2, 3, 4, 40

op = st.one_of(
    st.tuples(
        st.just("alloc"),
        st.integers(0, 5),
        st.integers(0, LAYERS - 1),
        st.lists(st.integers(0, 13), min_size=HEADS, max_size=HEADS),
    ),
    st.tuples(st.just("free"), st.integers(0, 5)),
)


def check_invariants(mgr: PageTableManager) -> None:
    pool = mgr.pool
    owned = [b for t in mgr.tables.values() for b in t.all_page_ids()]
    assert len(owned) == len(set(owned)), "a block is owned twice"
    assert NULL_PAGE_ID not in owned
    free = list(pool.free_page_queue)
    assert len(free) == len(set(free))
    assert not set(owned) & set(free), "a block is both owned and free"
    assert len(owned) + len(free) == pool.num_usable_pages, "a block was lost"
    for b in owned:
        assert pool.ref_cnt[b] == 1
    for t in mgr.tables.values():
        for row in t.heads:
            for h in row:
                assert len(h.page_ids) == pool.pages_for(h.num_tokens)


@settings(max_examples=200, deadline=None)
@given(st.lists(op, min_size=1, max_size=60))
def test_random_operations_keep_the_pool_consistent(ops):
    mgr = PageTableManager(PagePool(POOL, BLOCK), LAYERS, HEADS)
    for o in ops:
        if o[0] == "alloc":
            _, rid, layer, counts = o
            table = mgr.tables.get(rid)
            held = sum(len(h.page_ids) for h in table.layer(layer)) if table else 0
            if mgr.pages_needed(counts) <= mgr.pool.num_free_pages + held:
                mgr.allocate_layer(rid, layer, counts)
            else:
                with pytest.raises(NoFreePagesError):
                    mgr.allocate_layer(rid, layer, counts)
        else:
            mgr.free(o[1])
        check_invariants(mgr)
    for rid in list(mgr.tables):
        mgr.free(rid)
    check_invariants(mgr)
    assert mgr.pool.num_free_pages == POOL - 1
