"""Bearer-token authentication for the API's routers, participant and operator alike.

`require_participant` and `require_operator` are FastAPI dependencies that return the
authenticated `Caller`; any router (the participant API here, the operator API elsewhere)
declares one of them and never sees a token. A missing token is 401 with
`WWW-Authenticate: Bearer`. A malformed, unknown or revoked token, and a real token of the
wrong kind (an operator token on a participant endpoint and the reverse), all get one and the
same answer (`refused_token()`: status, code, message and headers alike), so an answer never
tells a caller that what it holds is somebody's real token.

Verified tokens may be remembered for `ApiConfig.auth_cache_seconds` (default 2, at most 5):
a revocation is refused at most that long after it committed. The cache keys on a SHA-256 of
the token, so the plaintext is not kept, and it never remembers a refusal (a new token works at
once, and garbage tokens cannot fill it).
"""

from __future__ import annotations

import hashlib
import re
import time
from collections.abc import Callable
from typing import Annotated, Final

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from symphony.outbox.access import Authenticator, Caller, TokenKind
from symphony.services.api.context import ApiContext, get_context
from symphony.services.api.error import ApiError

# RFC 6750 token68 characters, bounded: anything else is refused before the database is asked.
_TOKEN: Final = re.compile(r"[A-Za-z0-9._~+/-]{1,512}=*")
_MAX_CACHE_ENTRIES: Final = 10_000


class CachedAuthenticator:
    """Remembers verified tokens for at most `ttl_seconds`; 0 asks the inner one every time."""

    def __init__(
        self,
        inner: Authenticator,
        ttl_seconds: float,
        *,
        clock: Callable[[], float] = time.monotonic,
        max_entries: int = _MAX_CACHE_ENTRIES,
    ) -> None:
        self.inner = inner
        self.ttl = ttl_seconds
        self._clock = clock
        self._max = max_entries
        self._entries: dict[bytes, tuple[Caller, float]] = {}

    async def authenticate(self, token: str) -> Caller | None:
        if self.ttl <= 0:
            return await self.inner.authenticate(token)
        key = hashlib.sha256(token.encode("utf-8")).digest()
        hit = self._entries.get(key)
        if hit is not None and hit[1] > self._clock():
            return hit[0]
        self._entries.pop(key, None)
        caller = await self.inner.authenticate(token)
        if caller is not None:
            if len(self._entries) >= self._max:
                self._evict()
            # The clock is read after the lookup: the entry lives ttl from when it was true.
            self._entries[key] = (caller, self._clock() + self.ttl)
        return caller

    def _evict(self) -> None:
        now = self._clock()
        for key in [k for k, (_, expires) in self._entries.items() if expires <= now]:
            del self._entries[key]
        while len(self._entries) >= self._max:
            del self._entries[next(iter(self._entries))]


_bearer = HTTPBearer(
    auto_error=False,
    description="`Authorization: Bearer <token>`: a participant token (`sy_pt_...`) for "
    "/v1/payments, an operator token for /v1/ops.",
)


def _unauthorized(message: str, *, invalid_token: bool) -> ApiError:
    challenge = 'Bearer realm="symphony"'
    if invalid_token:
        challenge += ', error="invalid_token"'
    return ApiError(401, "unauthorized", message, headers={"WWW-Authenticate": challenge})


def refused_token() -> ApiError:
    """The one answer to credentials that do not open this door: malformed, unknown, revoked,
    of a revoked participant, or a real token of the other kind. Any distinction here would
    confirm to whoever holds a token that it is a real one."""
    return _unauthorized("the token is not valid for this endpoint", invalid_token=True)


async def _caller(
    request: Request, credentials: HTTPAuthorizationCredentials | None, context: ApiContext
) -> Caller:
    header = request.headers.get("authorization")
    if header is None:
        raise _unauthorized("a bearer token is required", invalid_token=False)
    if credentials is None or not _TOKEN.fullmatch(credentials.credentials):
        raise refused_token()
    caller = await context.authenticator.authenticate(credentials.credentials)
    if caller is None:
        raise refused_token()
    return caller


async def require_participant(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
    context: Annotated[ApiContext, Depends(get_context)],
) -> Caller:
    """The caller, who must hold a participant token."""
    caller = await _caller(request, credentials, context)
    if caller.kind != TokenKind.PARTICIPANT or not caller.participant_id:
        raise refused_token()
    request.state.participant_id = caller.participant_id
    return caller


async def require_operator(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
    context: Annotated[ApiContext, Depends(get_context)],
) -> Caller:
    """The caller, who must hold an operator token."""
    caller = await _caller(request, credentials, context)
    if caller.kind != TokenKind.OPERATOR:
        raise refused_token()
    request.state.operator_token_id = str(caller.token_id)
    return caller
