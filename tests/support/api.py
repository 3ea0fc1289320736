"""Running the HTTP API for a test: uvicorn on a loopback ephemeral port, an httpx client.

`serve(db, ...)` starts an `ApiServer` on 127.0.0.1:0 and yields it with a client whose base
URL is the real bound port; the token cache is off unless a test asks for one, so a
revocation is visible to the very next request.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import httpx
from fastapi import APIRouter

from symphony.db import Database, test_only
from symphony.outbox.access import AccessStore, TokenKind
from symphony.services.api import ApiConfig, ApiServer, Authenticator


@dataclass(frozen=True, slots=True)
class Running:
    server: ApiServer
    client: httpx.AsyncClient

    @property
    def url(self) -> str:
        return self.server.url


@asynccontextmanager
async def serve(
    db: Database,
    *,
    routers: Sequence[APIRouter] = (),
    authenticator: Authenticator | None = None,
    **config: Any,
) -> AsyncIterator[Running]:
    settings: dict[str, Any] = {"host": "127.0.0.1", "port": 0, "auth_cache_seconds": 0}
    settings.update(config)
    server = ApiServer(db, ApiConfig(**settings), routers=routers, authenticator=authenticator)
    await server.start()
    try:
        # trust_env=False: a proxy from the environment must never see loopback traffic.
        async with httpx.AsyncClient(base_url=server.url, trust_env=False,
                                     timeout=30.0) as client:
            yield Running(server, client)
    finally:
        await server.stop()


# -- participants, tokens and the database's row counts --------------------------------------

PAYMENT_BODY: dict[str, Any] = {
    "instruction_id": "will-be-replaced",
    "rail_type": "SEPA_CT",
    "amount": "12.50",
    "currency": "EUR",
    "destination": "DE89370400440532013000",
}


def payment_body(**overrides: Any) -> dict[str, Any]:
    """A valid POST /v1/payments body with a fresh instruction id; override any field."""
    body = {**PAYMENT_BODY, "instruction_id": f"instr-{uuid.uuid4().hex[:16]}"}
    body.update(overrides)
    return body


def bearer(token: str, **extra: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}", **extra}


@dataclass(frozen=True, slots=True)
class Member:
    """A participant with a live token."""

    participant_id: str
    token: str
    token_id: uuid.UUID

    def headers(self, key: str | None = None, **extra: str) -> dict[str, str]:
        headers = bearer(self.token, **extra)
        if key is not None:
            headers["Idempotency-Key"] = key
        return headers


async def new_member(db: Database, prefix: str = "p") -> Member:
    access = AccessStore(db)
    participant_id = f"{prefix}-{uuid.uuid4().hex[:12]}"
    await access.add_participant(participant_id, f"test participant {participant_id}")
    issued = await access.issue_token(TokenKind.PARTICIPANT, participant_id=participant_id,
                                      label="test")
    return Member(participant_id, issued.token, issued.token_id)


async def operator_token(db: Database) -> str:
    issued = await AccessStore(db).issue_token(TokenKind.OPERATOR, label="test operator")
    return issued.token


_TABLES = """
SELECT c.relname AS name
  FROM pg_catalog.pg_class c
  JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
 WHERE n.nspname = 'symphony' AND c.relkind IN ('r', 'p')
 ORDER BY 1
"""
_PLAIN_NAME = re.compile(r"[a-z_][a-z0-9_]*")


async def row_counts(admin_dsn: str) -> dict[str, int]:
    """Rows in every table of the symphony schema (what a refused request must not change),
    counted in one statement, so the numbers are of one moment."""
    names = [str(r["name"]) for r in await test_only.query_no_role(admin_dsn, _TABLES)]
    assert names and all(_PLAIN_NAME.fullmatch(n) for n in names), names
    statement = " UNION ALL ".join(
        f"SELECT '{name}' AS name, count(*) AS n FROM symphony.\"{name}\"" for name in names
    )
    rows = await test_only.query_no_role(admin_dsn, statement)
    return {str(r["name"]): int(r["n"]) for r in rows}
