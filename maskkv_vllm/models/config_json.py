"""Reading and checking a checkpoint's ``config.json``: the rules every model's
config shares (a JSON object, fixed values, integer/boolean/number fields)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any


def read_config_json(path: str | Path) -> dict[str, Any]:
    """The JSON object in ``path``; FileNotFoundError or ValueError naming it."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no config.json at {path}")
    try:
        raw = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path} is not valid JSON: {e}") from e
    if not isinstance(raw, dict):
        raise ValueError(f"{path} must hold a JSON object, not a {type(raw).__name__}")
    return raw


def check_fixed_values(raw: dict[str, Any], fixed: dict[str, tuple[Any, ...]]) -> None:
    """Refuse a field whose value is not one of its supported values: a checkpoint
    that asks for anything else would silently run a different network."""
    for key, allowed in fixed.items():
        if key in raw and raw[key] not in allowed:
            raise ValueError(
                f"config.json: {key}={raw[key]!r} is not supported "
                f"(supported: {', '.join(map(repr, allowed))})"
            )


def check_required(raw: dict[str, Any], names: tuple[str, ...]) -> None:
    """Raise naming the first of ``names`` that ``raw`` lacks."""
    for key in names:
        if key not in raw:
            raise ValueError(f"config.json: required field {key!r} is missing")


def check_types(config_cls: type, kwargs: dict[str, Any]) -> None:
    """Check each value against its dataclass field's annotation (int, bool, float;
    ``X | None`` also takes None), naming the first that does not fit."""
    for f in dataclasses.fields(config_cls):
        value = kwargs.get(f.name)
        if value is None:
            continue
        kind = str(f.type).removesuffix(" | None")
        if kind == "int" and (not isinstance(value, int) or isinstance(value, bool)):
            raise ValueError(f"config.json: {f.name}={value!r} is not an integer")
        if kind == "bool" and not isinstance(value, bool):
            raise ValueError(f"config.json: {f.name}={value!r} is not a boolean")
        if kind == "float" and not isinstance(value, int | float):
            raise ValueError(f"config.json: {f.name}={value!r} is not a number")


def require_positive(name: str, value: int) -> None:
    if value <= 0:
        raise ValueError(f"{name}={value} must be positive")
