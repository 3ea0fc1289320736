"""JSON as a payment system must read it: one reading per document, whoever reads it.

`json.loads` alone accepts what two readers may read differently, so that a proxy, an auditor
or the rail could act on another payment than the one stored:

- a member named twice in one object, at any depth (readers keep the first, the last, or
  refuse: RFC 8259 leaves it open);
- NaN and Infinity (not JSON), numbers too large for a float (1e999), lone surrogates (valid
  JSON text, not storable as UTF-8), and nesting deeper than any payment needs.

`loads` refuses each with `ValueError`; every place that reads JSON from outside (the API's
request bodies, `symphony enqueue --payload`, a rail's answers) goes through it. It imports
nothing of the product, so every layer may use it.
"""

from __future__ import annotations

import json
import math
from typing import Any, Final

MAX_DEPTH: Final = 32


def loads(
    text: str | bytes, *, max_depth: int | None = MAX_DEPTH, storable: bool = True
) -> Any:
    """`text` as strict JSON (see the module's docstring); `ValueError` when it is not.

    `max_depth=None` leaves nesting to the reader behind (the database refuses a deep payload
    with its own code, which `symphony enqueue` reports), bounded only by Python's recursion.
    `storable=False` keeps only the rules against two readings (repeated members, NaN,
    Infinity, 1e999): for a document whose text is cleaned where it is used (a rail's answer), a lone
    surrogate in a message is no ambiguity."""
    try:
        raw = text.decode("utf-8") if isinstance(text, bytes) else text
        value = json.loads(raw, parse_constant=_no_constant, object_pairs_hook=_unique_members)
        _check(value, 0, max_depth, storable)
    except RecursionError:
        raise ValueError("nested too deeply") from None
    except UnicodeError as exc:  # a UnicodeError is a ValueError; say what it was
        raise ValueError(f"not UTF-8 text ({type(exc).__name__})") from None
    return value


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _unique_members(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """An object whose member names are unique, whatever the values; names are compared
    decoded (`"a"` and `"\\u0061"` are one)."""
    value = dict(pairs)
    if len(value) != len(pairs):
        raise ValueError("a member name is repeated")
    return value


def _check(value: Any, depth: int, max_depth: int | None, storable: bool) -> None:
    """What json.loads lets through but JSON text and PostgreSQL cannot hold: lone surrogates,
    infinite numbers (1e999), and nesting deeper than any payment needs."""
    if max_depth is not None and depth > max_depth:
        raise ValueError("nested too deeply")
    if isinstance(value, str):
        if storable:
            value.encode("utf-8")
    elif isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError("number out of range")
    elif isinstance(value, dict):
        for key, item in value.items():
            if storable:
                key.encode("utf-8")
            _check(item, depth + 1, max_depth, storable)
    elif isinstance(value, list):
        for item in value:
            _check(item, depth + 1, max_depth, storable)
