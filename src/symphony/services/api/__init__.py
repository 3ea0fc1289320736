"""The HTTP API: participants submit and follow payments; operators (through routers mounted
into the same app) look after the system.

`create_app` builds the FastAPI app, `ApiServer` serves it with uvicorn on the running loop,
`ApiConfig` holds its validated settings, and `symphony.services.api.auth` has the
dependencies a router uses to require a participant or an operator token.
"""

from __future__ import annotations

from symphony.outbox.access import Authenticator, Caller
from symphony.services.api.app import create_app
from symphony.services.api.auth import (
    CachedAuthenticator,
    require_operator,
    require_participant,
)
from symphony.services.api.config import ApiConfig
from symphony.services.api.context import ApiContext, get_context
from symphony.services.api.error import ApiError, ErrorBody, FieldError
from symphony.services.api.server import ApiServer

__all__ = [
    "ApiConfig",
    "ApiContext",
    "ApiError",
    "ApiServer",
    "Authenticator",
    "CachedAuthenticator",
    "Caller",
    "ErrorBody",
    "FieldError",
    "create_app",
    "get_context",
    "require_operator",
    "require_participant",
]
