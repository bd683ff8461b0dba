"""How many vLLM blocks a LLaDA request holds: before step 0 and after it.

One vLLM block of the pool holds ``Hkv`` head-pages (this rank's KV heads of
one layer, ``P`` slots each; ``kv_spec``). Both numbers come from the
functions the embedded engine sizes its pages with:

- ``reserved_blocks``: the admission bound, ``eviction.budget.reserved_pages``
  over the policy's layer budgets (every layer keeps all M for the full cache),
  in blocks. The canvas holds no pages: it is recomputed every step.
- ``held_blocks``: the exact count once the kept lengths are known,
  ``cache.page_table.pages_for`` per rank, in blocks; the largest rank's,
  since all ranks share the block ids.

"""

from __future__ import annotations

from maskkv_vllm.eviction.budget import reserved_pages
from maskkv_vllm.eviction.policy import Policy
from maskkv_vllm.paging.page_table import blocks_for_pages, pages_for
from maskkv_vllm.sampling_params import SamplingParams


def reserved_blocks(
    policy: Policy,
    params: SamplingParams,
    prompt_len: int,
    num_layers: int,
    num_kv_heads: int,
    block_size: int,
    tp_size: int = 1,
    group: int = 1,
) -> int:
    """Blocks that hold the request's prompt KV after step 0, for any head split
    (and its cached canvas entries with a ``canvas_cache``).

    Args:
        policy: the request's policy (``evicts`` False: the full prompt).
        params: its sampling params (budget B).
        prompt_len: M.
        num_layers: D.
        num_kv_heads: Hkv of the whole model.
        block_size: P.
        tp_size: N ranks; each holds Hkv / N heads per block.
        group: query heads per KV head (``SamplingParams.canvas_entries``).

    Example: full cache, M = 200, D = 2, Hkv = 4, P = 32: 2 * 4 * 7 pages,
    4 per block -> 14 blocks.
    """
    local = num_kv_heads // tp_size
    budgets = policy.kept_per_layer(num_layers, params.kv_budget, prompt_len)
    pages = reserved_pages(
        budgets, prompt_len, local, block_size, num_kv_heads,
        canvas_tokens=params.canvas_entries(group),
    )  # fmt: skip
    return blocks_for_pages(pages, local)


def held_blocks(
    kept_lengths: dict[int, list[int]], block_size: int, tp_size: int = 1
) -> int:
    """Blocks a request needs for the kept entries its step 0 reported.

    Args:
        kept_lengths: layer -> kept entries of every KV head (all ranks).
        block_size: P.
        tp_size: N; rank r holds heads ``r * Hkv/N .. (r + 1) * Hkv/N - 1``.

    Example: one layer, heads (70, 3, 0, 32), P = 32, one rank: 3 + 1 + 0 + 1
    = 5 pages, 4 per block -> 2 blocks.
    """
    lengths = list(kept_lengths.values())
    if not lengths:
        return 0
    local = len(lengths[0]) // tp_size
    per_rank = [
        pages_for((n for heads in lengths for n in heads[r * local : (r + 1) * local]),
                  block_size)
        for r in range(tp_size)
    ]  # fmt: skip
    return blocks_for_pages(max(per_rank), local)
