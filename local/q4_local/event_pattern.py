"""EventBridge event pattern matching, for delivering events the way a deployed rule would.

moto does not implement ``TestEventPattern``, so the runtime matches rules itself. Supported:
exact values (strings, numbers, booleans, null), nested fields, array-valued event fields (any
element matches), ``$or``, and the content filters ``prefix``, ``suffix``, ``anything-but``,
``exists``, ``equals-ignore-case`` and ``numeric``. Anything else matches nothing (and the
runtime log says the rule was skipped).
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from typing import Any

_MISSING = object()
_NUMERIC: dict[str, Callable[[Any, Any], bool]] = {
    "<": operator.lt,
    "<=": operator.le,
    "=": operator.eq,
    ">=": operator.ge,
    ">": operator.gt,
}


class UnsupportedPattern(ValueError):
    """The pattern uses a filter this matcher does not implement."""


def matches(pattern: dict[str, Any], event: dict[str, Any]) -> bool:
    """True when ``event`` matches the EventBridge ``pattern``."""
    for key, expected in pattern.items():
        if key == "$or":
            if not any(matches(alternative, event) for alternative in expected):
                return False
            continue
        value = event.get(key, _MISSING) if isinstance(event, dict) else _MISSING
        if isinstance(expected, dict):
            if value is _MISSING or not isinstance(value, dict):
                return False
            if not matches(expected, value):
                return False
        elif not _field_matches(expected, value):
            return False
    return True


def _field_matches(allowed: list[Any], value: Any) -> bool:
    values = value if isinstance(value, list) else [value]
    for condition in allowed:
        if isinstance(condition, dict):
            if _filter_matches(condition, value, values):
                return True
        elif any(v is not _MISSING and v == condition and type(v) is type(condition) for v in values):
            return True
    return False


def _filter_matches(condition: dict[str, Any], value: Any, values: list[Any]) -> bool:
    ((name, argument),) = condition.items()
    if name == "exists":
        return (value is not _MISSING) == bool(argument)
    present = [v for v in values if v is not _MISSING]
    if name == "prefix":
        return any(isinstance(v, str) and v.startswith(argument) for v in present)
    if name == "suffix":
        return any(isinstance(v, str) and v.endswith(argument) for v in present)
    if name == "equals-ignore-case":
        return any(isinstance(v, str) and v.lower() == str(argument).lower() for v in present)
    if name == "anything-but":
        excluded = argument if isinstance(argument, list) else [argument]
        if isinstance(argument, dict):
            return bool(present) and not any(_filter_matches(argument, v, [v]) for v in present)
        return bool(present) and all(v not in excluded for v in present)
    if name == "numeric":
        pairs = list(zip(argument[::2], argument[1::2], strict=True))
        return any(
            isinstance(v, int | float)
            and not isinstance(v, bool)
            and all(_NUMERIC[op](v, bound) for op, bound in pairs)
            for v in present
        )
    raise UnsupportedPattern(f"event pattern filter {name!r} is not supported by the local runtime")
