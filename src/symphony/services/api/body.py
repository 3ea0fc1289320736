"""Reading a JSON request body: after authentication, bounded, and strict.

Every API route that takes a JSON body reads it with `read_json(request)` in its handler,
not as a pydantic parameter. FastAPI reads a declared body parameter before it runs the
route's dependencies, so a route declaring one would wait for (up to the body deadline) the
body of a client with no token at all; a handler runs after its dependencies (the token
check among them). The body is parsed by `symphony.strict_json`: a member named twice (at any
depth), NaN, Infinity, 1e999, a lone surrogate or nesting deeper than 32 levels is 400
`invalid_json`. The size and time bounds are the request context middleware's
(413, 408) and apply while the body is read here.
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request

from symphony import strict_json
from symphony.services.api.error import ApiError


async def read_json(request: Request) -> Any:
    """The request's body as JSON, or 400 `invalid_json`."""
    return parse_json(await request.body())


def parse_json(raw: bytes) -> Any:
    """`raw` as strict JSON (`symphony.strict_json`), or 400 `invalid_json`."""
    try:
        return strict_json.loads(raw)
    except ValueError:
        raise ApiError(400, "invalid_json", "the request body is not valid UTF-8 JSON "
                       "(with each member name at most once per object)") from None
