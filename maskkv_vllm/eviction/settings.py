"""The rules a policy's settings follow, named by the setting (no torch).

Each policy dataclass checks its own settings in ``__post_init__`` with these,
so a bad value is refused where the setting lives, with its name, whoever
builds the policy: the registry from an engine's ``MaskKVConfig``, or a user
composing policies by hand.
"""

from __future__ import annotations


def check_fraction(name: str, value: object) -> None:
    """A number in [0, 1]."""
    number = isinstance(value, int | float) and not isinstance(value, bool)
    if not number or not 0 <= value <= 1:
        raise ValueError(f"{name}={value!r} must lie in [0, 1]")


def check_int(name: str, value: object, minimum: int) -> None:
    """An int >= ``minimum``."""
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        what = "a positive int" if minimum == 1 else f"an int >= {minimum}"
        raise ValueError(f"{name}={value!r} must be {what}")


def check_positive(name: str, value: object) -> None:
    """A number > 0."""
    number = isinstance(value, int | float) and not isinstance(value, bool)
    if not number or not value > 0:
        raise ValueError(f"{name}={value!r} must be positive")


def check_layers(name: str, value: object) -> None:
    """None, or a non-empty tuple of layer indices."""
    if value is not None and (
        not value or any(not isinstance(i, int) or i < 0 for i in value)
    ):
        raise ValueError(f"{name}={value!r} must be non-negative ints")
