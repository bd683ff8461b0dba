"""The KV cache as the embedded scheduler sees it: pages by count, and free.

Step 0 takes a request's pages layer by layer inside the forward (how many
each head keeps is only known there), so the scheduler cannot hand out pages
up front as vLLM's does. It reserves instead: a request is admitted when the
pages its policy may take at most (``reserved_pages``) are free, and a step
runs only when its full forwards' reservations fit. This is the only object
through which the scheduler touches the cache.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from maskkv_vllm.engine.request import Request
from maskkv_vllm.eviction.budget import fewest_pages, reserved_pages
from maskkv_vllm.sampling_params import SamplingParams

if TYPE_CHECKING:  # torch-free at run time: the scheduler imports this module
    from maskkv_vllm.eviction.policy_set import PolicySet
    from maskkv_vllm.kv_cache.prompt_cache import PromptCache

UNBOUNDED = 1 << 62
"""Free pages of a cache without a pool (``none`` mode, ``prefix``)."""


class KVCacheManager:
    """Page counts of the engine's prompt cache, per request.

    Args:
        prompt_cache: the engine's ``PromptCache``.
        policies: the engine's policies (a request's policy bounds its pages).
        num_layers, num_kv_heads: the model's.
        group: its query heads per KV head (the "adaptive" canvas cache keeps
            that many output entries per canvas row and KV head).
    """

    def __init__(
        self,
        prompt_cache: PromptCache | None,
        policies: PolicySet,
        num_layers: int,
        num_kv_heads: int,
        group: int = 1,
    ) -> None:
        self.prompt_cache, self.policies = prompt_cache, policies
        self.num_layers, self.num_kv_heads = num_layers, num_kv_heads
        self.group = group

    @property
    def pool(self):
        """The ``PagePool`` admission counts (None without a paged cache)."""
        return self.prompt_cache.page_pool if self.prompt_cache is not None else None

    @property
    def num_free_pages(self) -> int:
        pool = self.pool
        return pool.num_free_pages if pool is not None else UNBOUNDED

    def reserved_pages(self, params: SamplingParams, prompt_len: int) -> int:
        """Pages a request's step 0 may take, whatever the head split
        (``reserved_pages`` of its policy's per-layer budgets, per forward row),
        capped at the pool: a bound above the pool would keep the request (and,
        FCFS, everyone behind it) waiting forever; alone it runs or fails."""
        pool = self.pool
        bound = self._per_request(reserved_pages, params, prompt_len)
        return min(bound, pool.num_usable_pages) if pool is not None else 0

    def fewest_pages(self, params: SamplingParams, prompt_len: int) -> int:
        """The least a request's prompt KV can take (``fewest_pages``), uncapped."""
        return self._per_request(fewest_pages, params, prompt_len)

    def held_pages(self, request: Request) -> int:
        """Pages the request's rows hold now (0 before its first step)."""
        if self.prompt_cache is None or request.seq is None:
            return 0
        return sum(self.prompt_cache.num_pages(k) for k in request.seq.cache_keys)

    def full_entries(self, request: Request) -> int:
        """Entries its rows would keep with the full cache."""
        rows = request.params.num_rows
        return (
            rows * self.num_layers * self.num_kv_heads * len(request.prompt_token_ids)
        )

    def free(self, request: Request) -> None:
        """Give a request's pages back and drop its sequence; idempotent."""
        if request.seq is not None and self.prompt_cache is not None:
            for key in request.seq.cache_keys:
                self.prompt_cache.free(key)
        request.seq = None

    def _per_request(self, bound, params: SamplingParams, prompt_len: int) -> int:
        """``bound(per-layer budgets, M, Hkv, P, C)`` of one forward row, times
        the request's rows; 0 without a pool."""
        pool = self.pool
        if pool is None:
            return 0
        policy = self.policies.get(params.kv_policy)
        budgets = policy.kept_per_layer(self.num_layers, params.kv_budget, prompt_len)
        n = bound(
            budgets,
            prompt_len,
            self.num_kv_heads,
            pool.page_size,
            canvas_tokens=params.canvas_entries(self.group),
        )
        return params.num_rows * n
