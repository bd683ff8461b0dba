"""PagedKVCache: tokens land in the right pages, keep compacts and frees pages."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from maskkv_vllm.config import CacheConfig
from maskkv_vllm.kv_cache.kv_store import PagedKVStore
from maskkv_vllm.kv_cache.paged_kv_cache import PagedKVCache
from maskkv_vllm.paging.block_pool import NoFreeBlocksError

D = 2  # head_dim


def make_cache(num_blocks=16, block_size=4, layers=2, heads=2):
    return PagedKVCache(layers, heads, D, block_size, num_blocks)


def tokens(heads, n, offset=0.0):
    """k[h, i] = [100h + i + offset, -(100h + i)]: every token is recognisable."""
    h = torch.arange(heads, dtype=torch.float32)[:, None]
    i = torch.arange(n, dtype=torch.float32)[None, :]
    base = 100 * h + i
    return torch.stack([base + offset, -base], dim=-1)


def test_write_layer_places_tokens_in_their_pages():
    cache = make_cache()
    k = tokens(2, 6)
    cache.write_layer("r", 0, k, k + 0.5, torch.arange(10, 16))
    heads = cache.manager.tables["r"].layer(0)
    assert [h.block_ids for h in heads] == [[1, 2], [3, 4]]
    # Head 1's 5th token sits in page 4, slot 0.
    assert cache.store.k_cache[4, 0].tolist() == [104.0, -104.0]
    assert cache.store.positions[4, 0].item() == 14
    got_k, got_v, got_pos = cache.read_head("r", 0, 1)
    assert torch.equal(got_k, k[1]) and torch.equal(got_v, k[1] + 0.5)
    assert got_pos.tolist() == [10, 11, 12, 13, 14, 15]


def test_keep_compacts_into_the_fewest_pages_and_frees_the_rest():
    cache = make_cache()
    k = tokens(2, 7)
    cache.write_layer("r", 0, k, k, torch.arange(7))
    # Head 0 held pages [1, 2]; keeping tokens 6, 1, 4 needs one page: page 2 is freed.
    assert cache.keep("r", 0, 0, torch.tensor([6, 1, 4])) == 1
    assert cache.manager.tables["r"].layer(0)[0].block_ids == [1]
    got_k, _, pos = cache.read_head("r", 0, 0)
    assert pos.tolist() == [1, 4, 6]  # ascending: absolute positions survive
    assert got_k[:, 0].tolist() == [1.0, 4.0, 6.0]
    assert list(cache.pool.free_block_queue)[-1] == 2
    # Head 1 keeps nothing: both its pages go back.
    assert cache.keep("r", 0, 1, torch.tensor([], dtype=torch.long)) == 2
    assert cache.request_stats("r")["tokens_per_head"] == [[3, 0], [0, 0]]
    assert cache.free("r") == 1
    assert cache.pool.num_free_blocks == 15


def test_ragged_write_with_per_head_lengths_and_positions():
    cache = make_cache()
    k = tokens(2, 5)
    pos = torch.tensor([[0, 3, 7, 9, 11], [1, 2, 5, 6, 8]])
    cache.write_layer("r", 1, k, k, pos, lengths=[5, 2])
    assert cache.request_stats("r")["tokens_per_head"] == [[0, 0], [5, 2]]
    assert cache.read_head("r", 1, 1)[2].tolist() == [1, 2]
    bt, lens = cache.block_tables(["r"], 1)
    assert bt.tolist() == [[[1, 2], [3, 0]]]
    assert lens.tolist() == [[5, 2]]


def test_block_tables_of_a_batch_are_padded_with_the_null_page():
    cache = make_cache()
    cache.write_layer("a", 0, tokens(2, 9), tokens(2, 9), torch.arange(9))
    cache.write_layer("b", 0, tokens(2, 2), tokens(2, 2), torch.arange(2))
    bt, lens = cache.block_tables(["a", "b"], 0)
    assert bt.tolist() == [[[1, 2, 3], [4, 5, 6]], [[7, 0, 0], [8, 0, 0]]]
    assert lens.tolist() == [[9, 9], [2, 2]]
    # After a keep the cached table is rebuilt.
    cache.keep("a", 0, 1, torch.tensor([0]))
    bt, lens = cache.block_tables(["a"], 0)
    assert bt.tolist() == [[[1, 2, 3], [4, 0, 0]]] and lens.tolist() == [[9, 1]]


def test_running_out_of_pages_is_a_clear_error_not_an_overwrite():
    cache = make_cache(num_blocks=4)  # 3 usable pages of 4 slots
    cache.write_layer("a", 0, tokens(2, 4), tokens(2, 4), torch.arange(4))
    before = cache.store.k_cache.clone()
    with pytest.raises(NoFreeBlocksError, match="need 2 KV pages but only 1 of 3"):
        cache.write_layer("b", 0, tokens(2, 4, 0.25), tokens(2, 4), torch.arange(4))
    assert torch.equal(cache.store.k_cache, before)
    assert cache.pool.num_free_blocks == 1


def test_bad_keep_indices():
    cache = make_cache()
    cache.write_layer("r", 0, tokens(2, 4), tokens(2, 4), torch.arange(4))
    with pytest.raises(
        ValueError, match=r"keep indices must lie in \[0, 4\), got \[0, 4\]"
    ):
        cache.keep("r", 0, 0, torch.tensor([0, 4]))
    with pytest.raises(ValueError, match="unique"):
        cache.keep("r", 0, 0, torch.tensor([1, 1]))
    with pytest.raises(ValueError, match=r"lengths \[5, 1\] must lie in \[0, 4\]"):
        cache.write_layer("r", 0, tokens(2, 4), tokens(2, 4), torch.arange(4), [5, 1])


def test_sizing_from_a_memory_budget():
    # A page of 16 slots x 64 dims: 16 * (2 * 64 * 4 + 4) = 8256 bytes in fp32.
    assert PagedKVStore.bytes_per_block(16, 64, torch.float32) == 8256
    assert PagedKVStore.bytes_per_block(16, 128, torch.bfloat16) == 8256
    cfg = CacheConfig("paged", block_size=16, kv_cache_memory="1MiB")
    cache = PagedKVCache.from_config(cfg, 2, 2, 64, torch.float32, "cpu")
    assert cache.pool.num_blocks == 2**20 // 8256 == 127
    assert cache.pool_stats()["bytes_per_block"] == 8256
    cfg = CacheConfig("paged", num_blocks=10)
    assert (
        PagedKVCache.from_config(cfg, 2, 2, 64, torch.float32, "cpu").pool.num_blocks
        == 10
    )
    with pytest.raises(ValueError, match="holds 1 pages of 8256 bytes"):
        cfg = CacheConfig("paged", kv_cache_memory="10000")
        PagedKVCache.from_config(cfg, 2, 2, 64, torch.float32, "cpu")


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"kv_cache_memory": "4 lightyears"}, "is not like '4GiB'"),
        ({"kv_cache_memory": "0GiB"}, "must be positive"),
        ({"kv_cache_memory": "1GiB", "num_blocks": 4}, "not both"),
        ({"num_blocks": 1}, "num_blocks=1"),
        ({"block_size": 0}, "block_size=0"),
    ],
)
def test_bad_cache_config(kwargs, message):
    with pytest.raises(ValueError, match=message):
        CacheConfig("paged", **kwargs)


def test_stats():
    cache = make_cache()
    cache.write_layer("r", 0, tokens(2, 5), tokens(2, 5), torch.arange(5))
    stats = cache.request_stats("r")
    page = 4 * (2 * D * 4 + 4)
    assert stats == {
        "num_blocks": 4,
        "bytes": 4 * page,
        "tokens_per_head": [[5, 5], [0, 0]],
    }
    pool = cache.pool_stats()
    assert (pool["num_used_blocks"], pool["num_free_blocks"]) == (4, 11)
    assert pool["max_used_blocks"] == 4 and pool["used_bytes"] == 4 * page
    cache.free("r")
    assert cache.pool_stats()["max_used_blocks"] == 4  # the high-water mark stays


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["write", "keep", "free"]),
            st.integers(0, 3),  # request
            st.integers(0, 1),  # layer
            st.integers(0, 1),  # head
            st.integers(0, 11),  # tokens
            st.integers(0, 2**16),  # seed for kept indices
        ),
        max_size=30,
    )
)
def test_kept_data_survives_random_operations(ops):
    """Mirror every request in plain lists; the pages must always read back the same."""
    cache = make_cache(num_blocks=24)
    mirror: dict = {}
    for kind, rid, layer, head, n, seed in ops:
        if kind == "write":
            k = tokens(2, n, offset=rid * 1000 + layer * 0.5)
            pos = torch.arange(n) + rid * 100
            try:
                cache.write_layer(rid, layer, k, k, pos)
            except NoFreeBlocksError:
                mirror.setdefault(rid, {})[layer] = [[], []]
                continue
            mirror.setdefault(rid, {})[layer] = [
                list(zip(k[h, :, 0].tolist(), pos.tolist(), strict=True))
                for h in (0, 1)
            ]
        elif kind == "keep" and layer in mirror.get(rid, {}):
            held = mirror[rid][layer][head]
            g = torch.Generator().manual_seed(seed)
            idx = torch.randperm(len(held), generator=g)[: min(n, len(held))]
            cache.keep(rid, layer, head, idx)
            mirror[rid][layer][head] = [held[i] for i in sorted(idx.tolist())]
        elif kind == "free":
            cache.free(rid)
            mirror.pop(rid, None)
        for r, layers in mirror.items():
            for lyr, heads in layers.items():
                for h, held in enumerate(heads):
                    k, _, pos = cache.read_head(r, lyr, h)
                    assert (
                        list(zip(k[:, 0].tolist(), pos.tolist(), strict=True)) == held
                    )
    for r in list(mirror):
        cache.free(r)
    assert cache.pool.num_free_blocks == cache.pool.num_usable_blocks
