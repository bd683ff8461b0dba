"""PagePool scenarios with exact block ids: 8 blocks of 16 slots, block 0 is null."""

from __future__ import annotations

import pytest

from maskkv_vllm.paging.page_pool import NoFreePagesError, PagePool


def make_pool(num_pages=8, page_size=16):
    return PagePool(num_pages, page_size)


def test_allocate_from_the_head_free_to_the_tail():
    pool = make_pool()
    assert list(pool.free_page_queue) == [1, 2, 3, 4, 5, 6, 7]
    a = pool.allocate(3)
    b = pool.allocate(2)
    assert (a, b) == ([1, 2, 3], [4, 5])
    assert pool.num_free_pages == 2 and pool.num_used_pages == 5
    # Freed pages join the tail in the order given, behind the never-used 6 and 7.
    pool.free([2, 1])
    assert list(pool.free_page_queue) == [6, 7, 2, 1]
    # Reuse takes the oldest free page first.
    assert pool.allocate(3) == [6, 7, 2]
    assert pool.max_used_pages == 6


def test_out_of_pages_is_a_clear_error_and_takes_nothing():
    pool = make_pool()
    pool.allocate(5)
    assert not pool.can_allocate(3)
    with pytest.raises(
        NoFreePagesError, match="need 3 KV pages but only 2 of 7 are free"
    ):
        pool.allocate(3)
    assert pool.num_free_pages == 2


def test_double_free_and_null_block_are_refused():
    pool = make_pool()
    a = pool.allocate(2)
    pool.free(a)
    with pytest.raises(ValueError, match="page_id=1 holds 0 references"):
        pool.free([1])
    (b,) = pool.allocate(1)
    with pytest.raises(
        ValueError, match=f"page_id={b} holds 1 references, cannot drop 2"
    ):
        pool.free([b, b])
    assert pool.ref_cnt[b] == 1  # the bad call changed nothing
    with pytest.raises(ValueError, match="null page"):
        pool.free([0])
    with pytest.raises(ValueError, match="page_id=99 is outside"):
        pool.free([99])


def test_pages_for():
    pool = make_pool()
    assert [pool.pages_for(n) for n in (0, 1, 16, 17, 32)] == [0, 1, 1, 2, 2]


@pytest.mark.parametrize(
    "args, message",
    [
        ((1, 16), "num_pages=1"),
        ((8, 0), "page_size=0"),
        ((8.0, 16), "num_pages=8.0"),
    ],
)
def test_bad_sizes(args, message):
    with pytest.raises(ValueError, match=message):
        PagePool(*args)
