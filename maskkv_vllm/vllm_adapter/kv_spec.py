"""vLLM's KV pool as a pool of head-pages: the spec and the block manager.

The model registers ONE vLLM attention layer (``model.kv_pool``) whose cache is
the pool of every LLaDA layer: a vLLM block is one layer's KV heads for
``block_size`` slots, i.e. ``Hkv`` head-pages. A request's blocks carry its
head-pages of all layers, packed in (layer, head) order by the runner
(``request_pages.RequestPages``), so after step 0 it holds
``ceil(sum_{l,h} ceil(k_{l,h} / P) / Hkv)`` blocks: the embedded engine's
head-granular footprint plus less than one block.

- ``DiffusionKVSpec`` sizes the worker's block table and vLLM's
  one-request-fits check for the ``D`` layers a block pool serves.
- ``MaskKVBlockManager`` allocates a request its *reservation* (blocks, set by
  the scheduler) instead of ``ceil(tokens / block_size)``: before step 0 the
  compressed upper bound, after it the exact count (``shrink`` returns the
  rest to vLLM's ``BlockPool``). Requests without a reservation get vLLM's
  behaviour.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from vllm.utils.math_utils import cdiv
from vllm.v1.core.single_type_kv_cache_manager import FullAttentionManager
from vllm.v1.kv_cache_interface import FullAttentionSpec


@dataclass(frozen=True, kw_only=True)
class DiffusionKVSpec(FullAttentionSpec):
    """One layer's KV spec standing for the page pool of ``num_model_layers``."""

    num_model_layers: int = 1
    """D, the LLaDA layers whose head-pages share this layer's blocks."""

    def max_num_blocks_per_req(self, vllm_config: Any, max_len: int) -> int:
        # A full-cache request holds every layer's prompt: D times one layer.
        return self.num_model_layers * cdiv(max_len, self.block_size)

    def max_memory_usage_bytes(self, vllm_config: Any) -> int:
        return self.num_model_layers * super().max_memory_usage_bytes(vllm_config)

    @classmethod
    def merge(cls, specs: list[Any]) -> DiffusionKVSpec:
        # vLLM rebuilds a group's spec from the base fields only; keep ours.
        layers = {spec.num_model_layers for spec in specs}
        if len(layers) != 1:
            raise ValueError(f"pool layers disagree on num_model_layers: {layers}")
        return dataclasses.replace(super().merge(specs), num_model_layers=layers.pop())


class MaskKVBlockManager(FullAttentionManager):
    """vLLM's full-attention manager, sized by per-request reservations."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.reservations: dict[str, int] = {}
        """req_id -> blocks the request holds once allocated."""

    def reserve(self, request_id: str, num_blocks: int) -> None:
        """Set how many blocks the request's next allocation brings it to."""
        if num_blocks < 0:
            raise ValueError(f"num_blocks={num_blocks} must be >= 0")
        self.reservations[request_id] = num_blocks

    def release(self, request_id: str) -> None:
        """Forget the reservation (the request has ended); blocks go by ``free``."""
        self.reservations.pop(request_id, None)

    def num_held(self, request_id: str) -> int:
        return len(self.req_to_blocks.get(request_id, ()))

    def get_num_blocks_to_allocate(
        self, request_id: str, num_tokens: int, *args: Any, **kwargs: Any
    ) -> int:
        target = self.reservations.get(request_id)
        if target is None:
            return super().get_num_blocks_to_allocate(
                request_id, num_tokens, *args, **kwargs
            )
        return max(target - self.num_held(request_id), 0)

    def allocate_new_blocks(
        self, request_id: str, num_tokens: int, num_tokens_main_model: int
    ) -> list[Any]:
        target = self.reservations.get(request_id)
        if target is None:
            return super().allocate_new_blocks(
                request_id, num_tokens, num_tokens_main_model
            )
        blocks = self.req_to_blocks[request_id]
        missing = target - len(blocks)
        if missing <= 0:
            return []
        new = self.block_pool.get_new_blocks(missing)
        blocks.extend(new)
        if self._record_new_block_ids:
            self.new_block_ids.extend(b.block_id for b in new)
        return new

    def shrink(self, request_id: str, num_blocks: int) -> int:
        """Keep the request's first ``num_blocks`` blocks, free the rest.

        The runner packs head-pages from the first block on, so the tail is
        unused. Returns the number of blocks freed (0 if it holds no more).
        """
        blocks = self.req_to_blocks.get(request_id, [])
        if num_blocks < 0:
            raise ValueError(f"num_blocks={num_blocks} must be >= 0")
        self.reservations[request_id] = num_blocks
        surplus = blocks[num_blocks:]
        if not surplus:
            return 0
        del blocks[num_blocks:]
        self.block_pool.free_blocks(reversed(surplus))
        return len(surplus)


def ensure_registered(vllm_config: Any = None) -> None:
    """Register ``DiffusionKVSpec`` -> ``MaskKVBlockManager`` once.

    vLLM fills its registry with the built-in specs only while it is empty, so
    they are registered first; re-registering the same pair is a no-op.
    """
    from vllm.v1.kv_cache_spec_registry import KVCacheSpecRegistry

    KVCacheSpecRegistry._ensure_registered(vllm_config)
    KVCacheSpecRegistry.register(
        DiffusionKVSpec, MaskKVBlockManager, uniform_type_base_spec=FullAttentionSpec
    )
