"""Bring a server to a usable state: find or start it, migrate it, provision the principals.

Provisioning (random passwords, kept in the credentials file) is for the embedded server and
development. In production the operator sets each principal's password (see
docs/deployment.md) and the migration job runs with `provision=False`: a job with an empty
`SYMPHONY_HOME` would otherwise give every principal a new password and lock out the services.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import LiteralString

import psycopg

from symphony.db.config import DatabaseSettings
from symphony.db.credential import CredentialStore, provision_principals
from symphony.db.error import ConfigurationError, translate
from symphony.db.migration import MigrationReport, migrate
from symphony.db.server import EmbeddedServer, Endpoint, resolve_endpoint


@dataclass(frozen=True, slots=True)
class BootstrapResult:
    endpoint: Endpoint
    migrations: MigrationReport
    embedded: EmbeddedServer | None
    provisioned: bool = True


_SET_THRESHOLD: LiteralString = (
    "UPDATE symphony.outbox_retry_policy SET zombie_threshold_seconds = %s, updated_at = now()"
    " WHERE singleton AND zombie_threshold_seconds IS DISTINCT FROM %s"
)


async def bootstrap(
    settings: DatabaseSettings,
    *,
    embedded: EmbeddedServer | None = None,
    provision: bool = True,
    zombie_threshold_seconds: int | None = None,
) -> BootstrapResult:
    """Resolve the server, apply pending migrations and, with `provision`, (re)provision the
    principals' passwords into the credentials file.

    `zombie_threshold_seconds` (ZOMBIE_THRESHOLD_SECONDS, where the caller has it) is written
    into the database, which bounds every lease by it.
    """
    endpoint, server = await resolve_endpoint(settings, embedded=embedded)
    report = await migrate(endpoint.admin_dsn)
    if zombie_threshold_seconds is not None:
        await _set_zombie_threshold(endpoint.admin_dsn, zombie_threshold_seconds)
    if provision:
        await provision_principals(
            endpoint.admin_dsn, CredentialStore(settings.credentials_file), endpoint.server_key
        )
    return BootstrapResult(endpoint=endpoint, migrations=report, embedded=server,
                           provisioned=provision)


async def _set_zombie_threshold(admin_dsn: str, seconds: int) -> None:
    if not 1 <= seconds <= 86_400:
        raise ConfigurationError(
            "the zombie threshold must be between 1 and 86400 seconds",
            code="INVALID_ZOMBIE_THRESHOLD",
        )
    try:
        async with await psycopg.AsyncConnection.connect(admin_dsn, autocommit=True) as conn:
            await conn.execute(_SET_THRESHOLD, (seconds, seconds))
    except (psycopg.Error, OSError) as exc:
        raise translate(exc, "bootstrap:zombie-threshold") from exc
