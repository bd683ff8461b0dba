"""PagedKVCache: tokens land in the right pages, per-head lengths free pages."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from maskkv_vllm.config import CacheConfig
from maskkv_vllm.kv_cache.page_store import PageStore
from maskkv_vllm.kv_cache.paged_kv_cache import PagedKVCache
from maskkv_vllm.paging.page_pool import NoFreePagesError

D = 2  # head_dim


def make_cache(num_pages=16, page_size=4, layers=2, heads=2):
    return PagedKVCache(layers, heads, D, page_size, num_pages)


def tokens(heads, n, offset=0.0):
    """k[h, i] = [100h + i + offset, -(100h + i)]: every token is recognisable."""
    h = torch.arange(heads, dtype=torch.float32)[:, None]
    i = torch.arange(n, dtype=torch.float32)[None, :]
    base = 100 * h + i
    return torch.stack([base + offset, -base], dim=-1)


def read_head(cache, rid, layer, head):
    """(k (n, d), v (n, d)) a head holds, read through its pages in order."""
    h = cache.manager.head(rid, layer, head)
    k = cache.store.k_cache[h.page_ids].reshape(-1, D)[: h.num_tokens]
    v = cache.store.v_cache[h.page_ids].reshape(-1, D)[: h.num_tokens]
    return k, v


def test_write_layer_places_tokens_in_their_pages():
    cache = make_cache()
    k = tokens(2, 6)
    cache.write_layer("r", 0, k, k + 0.5)
    heads = cache.manager.tables["r"].layer(0)
    assert [h.page_ids for h in heads] == [[1, 2], [3, 4]]
    # Head 1's 5th token sits in page 4, slot 0.
    assert cache.store.k_cache[4, 0].tolist() == [104.0, -104.0]
    got_k, got_v = read_head(cache, "r", 0, 1)
    assert torch.equal(got_k, k[1]) and torch.equal(got_v, k[1] + 0.5)


def test_ragged_write_takes_pages_per_head():
    cache = make_cache()
    k = tokens(2, 5)
    cache.write_layer("r", 1, k, k, lengths=[5, 2])
    assert cache.request_stats("r")["tokens_per_head"] == [[0, 0], [5, 2]]
    assert torch.equal(read_head(cache, "r", 1, 1)[0], k[1, :2])
    bt, lens = cache.page_tables(["r"], 1)
    assert bt.tolist() == [[[1, 2], [3, 0]]]
    assert lens.tolist() == [[5, 2]]
    # Rewriting the layer with fewer entries gives its pages back first.
    cache.write_layer("r", 1, k, k, lengths=[1, 0])
    assert cache.page_tables(["r"], 1)[0].tolist() == [[[4], [0]]]
    assert list(cache.pool.free_page_queue)[-3:] == [1, 2, 3]


def test_block_tables_of_a_batch_are_padded_with_the_null_page():
    cache = make_cache()
    cache.write_layer("a", 0, tokens(2, 9), tokens(2, 9))
    cache.write_layer("b", 0, tokens(2, 2), tokens(2, 2))
    bt, lens = cache.page_tables(["a", "b"], 0)
    assert bt.tolist() == [[[1, 2, 3], [4, 5, 6]], [[7, 0, 0], [8, 0, 0]]]
    assert lens.tolist() == [[9, 9], [2, 2]]
    # After a rewrite the cached table is rebuilt.
    cache.write_layer("a", 0, tokens(2, 9), tokens(2, 9), [9, 1])
    bt, lens = cache.page_tables(["a"], 0)
    assert bt.tolist() == [[[9, 10, 11], [12, 0, 0]]] and lens.tolist() == [[9, 1]]


def test_running_out_of_pages_is_a_clear_error_not_an_overwrite():
    cache = make_cache(num_pages=4)  # 3 usable pages of 4 slots
    cache.write_layer("a", 0, tokens(2, 4), tokens(2, 4))
    before = cache.store.k_cache.clone()
    with pytest.raises(NoFreePagesError, match="need 2 KV pages but only 1 of 3"):
        cache.write_layer("b", 0, tokens(2, 4, 0.25), tokens(2, 4))
    assert torch.equal(cache.store.k_cache, before)
    assert cache.pool.num_free_pages == 1


def test_bad_lengths():
    cache = make_cache()
    with pytest.raises(ValueError, match=r"lengths \[5, 1\] must lie in \[0, 4\]"):
        cache.write_layer("r", 0, tokens(2, 4), tokens(2, 4), [5, 1])
    assert cache.pool.num_free_pages == 15


def test_sizing_from_a_memory_budget():
    # A page of 16 slots x 64 dims: 16 * 2 * 64 * 4 = 8192 bytes in fp32.
    assert PageStore.bytes_per_page(16, 64, torch.float32) == 8192
    assert PageStore.bytes_per_page(16, 128, torch.bfloat16) == 8192
    cfg = CacheConfig("paged", page_size=16, kv_cache_memory="1MiB")
    cache = PagedKVCache.from_config(cfg, 2, 2, 64, torch.float32, "cpu")
    assert cache.pool.num_pages == 2**20 // 8192 == 128
    assert cache.pool_stats()["bytes_per_page"] == 8192
    cfg = CacheConfig("paged", num_pages=10)
    assert (
        PagedKVCache.from_config(cfg, 2, 2, 64, torch.float32, "cpu").pool.num_pages
        == 10
    )
    with pytest.raises(ValueError, match="holds 1 pages of 8192 bytes"):
        cfg = CacheConfig("paged", kv_cache_memory="10000")
        PagedKVCache.from_config(cfg, 2, 2, 64, torch.float32, "cpu")


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"kv_cache_memory": "4 lightyears"}, "is not like '4GiB'"),
        ({"kv_cache_memory": "0GiB"}, "must be positive"),
        ({"kv_cache_memory": "1GiB", "num_pages": 4}, "not both"),
        ({"num_pages": 1}, "num_pages=1"),
        ({"page_size": 0}, "page_size=0"),
    ],
)
def test_bad_cache_config(kwargs, message):
    with pytest.raises(ValueError, match=message):
        CacheConfig("paged", **kwargs)


def test_stats():
    cache = make_cache()
    cache.write_layer("r", 0, tokens(2, 5), tokens(2, 5))
    stats = cache.request_stats("r")
    page = 4 * 2 * D * 4
    assert stats == {
        "num_pages": 4,
        "bytes": 4 * page,
        "tokens_per_head": [[5, 5], [0, 0]],
    }
    pool = cache.pool_stats()
    assert (pool["num_used_pages"], pool["num_free_pages"]) == (4, 11)
    assert pool["max_used_pages"] == 4 and pool["used_bytes"] == 4 * page
    cache.free("r")
    assert cache.pool_stats()["max_used_pages"] == 4  # the high-water mark stays


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["write", "free"]),
            st.integers(0, 3),  # request
            st.integers(0, 1),  # layer
            st.integers(0, 11),  # tokens
            st.integers(0, 11),  # head 1's kept tokens (clamped)
        ),
        max_size=30,
    )
)
def test_kept_data_survives_random_operations(ops):
    """Mirror every request in plain lists; the pages must always read back the same."""
    cache = make_cache(num_pages=24)
    mirror: dict = {}
    for kind, rid, layer, n, kept in ops:
        if kind == "write":
            k = tokens(2, n, offset=rid * 1000 + layer * 0.5)
            lengths = [n, min(kept, n)]
            try:
                cache.write_layer(rid, layer, k, k, lengths)
            except NoFreePagesError:
                mirror.setdefault(rid, {})[layer] = [[], []]
                continue
            mirror.setdefault(rid, {})[layer] = [
                k[h, : lengths[h], 0].tolist() for h in (0, 1)
            ]
        else:
            cache.free(rid)
            mirror.pop(rid, None)
        for r, layers in mirror.items():
            for lyr, heads in layers.items():
                for h, held in enumerate(heads):
                    assert read_head(cache, r, lyr, h)[0][:, 0].tolist() == held
    for r in list(mirror):
        cache.free(r)
    assert cache.pool.num_free_pages == cache.pool.num_usable_pages
