"""Reading a JSON request body: after authentication, bounded, and strict.

Every API route that takes a JSON body reads it with `read_json(request)` in its handler,
not as a pydantic parameter. FastAPI reads a declared body parameter before it runs the
route's dependencies, so a route declaring one would wait for (up to the body deadline) the
body of a client with no token at all; a handler runs after its dependencies (the token
check among them). And `json.loads` alone lets through what a payment must never carry:

- a member named twice in one object, at any depth: readers disagree on which one counts
  (first, last, or an error), so a proxy or an auditor could see another payment than the
  one stored;
- NaN and Infinity (not JSON), numbers too large for a float (1e999), lone surrogates
  (valid JSON text, not storable as UTF-8), and nesting deeper than any payment needs.

Each is 400 `invalid_json`. The size and time bounds are the request context middleware's
(413, 408) and apply while the body is read here.
"""

from __future__ import annotations

import json
import math
from typing import Any, Final

from starlette.requests import Request

from symphony.services.api.error import ApiError

MAX_JSON_DEPTH: Final = 32


async def read_json(request: Request) -> Any:
    """The request's body as JSON, or 400 `invalid_json`."""
    return parse_json(await request.body())


def parse_json(raw: bytes) -> Any:
    """`raw` as strict JSON (see the module's docstring), or 400 `invalid_json`."""
    try:
        value = json.loads(raw.decode("utf-8"), parse_constant=_no_constant,
                           object_pairs_hook=_unique_members)
        _check_json(value, 0)
    except (ValueError, RecursionError, UnicodeError):
        raise ApiError(400, "invalid_json", "the request body is not valid UTF-8 JSON "
                       "(with each member name at most once per object)") from None
    return value


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _unique_members(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """An object whose member names are unique (RFC 8259 says they SHOULD be), whatever the
    values; names are compared decoded (`"a"` and `"\\u0061"` are one)."""
    value = dict(pairs)
    if len(value) != len(pairs):
        raise ValueError("a member name is repeated")
    return value


def _check_json(value: Any, depth: int) -> None:
    """What json.loads lets through but JSON text and PostgreSQL cannot hold: lone surrogates,
    infinite numbers (1e999), and nesting deeper than any payment needs."""
    if depth > MAX_JSON_DEPTH:
        raise ValueError("nested too deeply")
    if isinstance(value, str):
        value.encode("utf-8")
    elif isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError("number out of range")
    elif isinstance(value, dict):
        for key, item in value.items():
            key.encode("utf-8")
            _check_json(item, depth + 1)
    elif isinstance(value, list):
        for item in value:
            _check_json(item, depth + 1)
