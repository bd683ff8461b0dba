"""BlockPool scenarios with exact block ids: 8 blocks of 16 slots, block 0 is null."""

from __future__ import annotations

import pytest

from maskkv_vllm.paging.block_pool import BlockPool, NoFreeBlocksError


def make_pool(num_blocks=8, block_size=16):
    return BlockPool(num_blocks, block_size)


def test_allocate_from_the_head_free_to_the_tail():
    pool = make_pool()
    assert list(pool.free_block_queue) == [1, 2, 3, 4, 5, 6, 7]
    a = pool.allocate(3)
    b = pool.allocate(2)
    assert (a, b) == ([1, 2, 3], [4, 5])
    assert pool.num_free_blocks == 2 and pool.num_used_blocks == 5
    # Freed pages join the tail in the order given, behind the never-used 6 and 7.
    pool.free([2, 1])
    assert list(pool.free_block_queue) == [6, 7, 2, 1]
    # Reuse takes the oldest free page first.
    assert pool.allocate(3) == [6, 7, 2]
    assert pool.max_used_blocks == 6


def test_out_of_pages_is_a_clear_error_and_takes_nothing():
    pool = make_pool()
    pool.allocate(5)
    assert not pool.can_allocate(3)
    with pytest.raises(
        NoFreeBlocksError, match="need 3 KV pages but only 2 of 7 are free"
    ):
        pool.allocate(3)
    assert pool.num_free_blocks == 2


def test_double_free_and_null_block_are_refused():
    pool = make_pool()
    a = pool.allocate(2)
    pool.free(a)
    with pytest.raises(ValueError, match="block_id=1 holds 0 references"):
        pool.free([1])
    (b,) = pool.allocate(1)
    with pytest.raises(
        ValueError, match=f"block_id={b} holds 1 references, cannot drop 2"
    ):
        pool.free([b, b])
    assert pool.ref_cnt[b] == 1  # the bad call changed nothing
    with pytest.raises(ValueError, match="null block"):
        pool.free([0])
    with pytest.raises(ValueError, match="block_id=99 is outside"):
        pool.free([99])


def test_blocks_for():
    pool = make_pool()
    assert [pool.blocks_for(n) for n in (0, 1, 16, 17, 32)] == [0, 1, 1, 2, 2]


@pytest.mark.parametrize(
    "args, message",
    [
        ((1, 16), "num_blocks=1"),
        ((8, 0), "block_size=0"),
        ((8.0, 16), "num_blocks=8.0"),
    ],
)
def test_bad_sizes(args, message):
    with pytest.raises(ValueError, match=message):
        BlockPool(*args)
