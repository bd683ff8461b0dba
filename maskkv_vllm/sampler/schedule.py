"""How many tokens each denoising step of a block commits (pure Python)."""

from __future__ import annotations


def num_transfer_tokens(num_masked: int, steps: int) -> list[int]:
    """Spread ``num_masked`` commits over ``steps``: ``m // s`` each, the first
    ``m % s`` steps one more (LLaDA's ``get_num_transfer_tokens``).

    >>> num_transfer_tokens(10, 4)
    [3, 3, 2, 2]
    """
    if steps <= 0:
        raise ValueError(f"steps={steps} must be positive")
    if num_masked < 0:
        raise ValueError(f"num_masked={num_masked} must be >= 0")
    base, extra = divmod(num_masked, steps)
    return [base + (1 if i < extra else 0) for i in range(steps)]
