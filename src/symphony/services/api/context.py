"""What every route of the API may use: the database, the outbox store, the authenticator and
the config, held by the app and handed out by the `get_context` dependency."""

from __future__ import annotations

from dataclasses import dataclass

from fastapi import Request

from symphony.db import Database
from symphony.outbox import OutboxStore
from symphony.outbox.access import Authenticator
from symphony.services.api.config import ApiConfig


@dataclass(frozen=True, slots=True)
class ApiContext:
    db: Database
    store: OutboxStore
    authenticator: Authenticator
    config: ApiConfig


def get_context(request: Request) -> ApiContext:
    """FastAPI dependency: the context of the app serving this request."""
    context = request.app.state.symphony
    assert isinstance(context, ApiContext)
    return context
