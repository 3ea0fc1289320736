"""Bring a server to a usable state: find or start it, migrate it, provision the principals."""

from __future__ import annotations

from dataclasses import dataclass

from symphony.db.config import DatabaseSettings
from symphony.db.credential import CredentialStore, provision_principals
from symphony.db.migration import MigrationReport, migrate
from symphony.db.server import EmbeddedServer, Endpoint, resolve_endpoint


@dataclass(frozen=True, slots=True)
class BootstrapResult:
    endpoint: Endpoint
    migrations: MigrationReport
    embedded: EmbeddedServer | None


async def bootstrap(
    settings: DatabaseSettings, *, embedded: EmbeddedServer | None = None
) -> BootstrapResult:
    """Resolve the server, apply pending migrations and (re)provision principal passwords."""
    endpoint, server = await resolve_endpoint(settings, embedded=embedded)
    report = await migrate(endpoint.admin_dsn)
    await provision_principals(
        endpoint.admin_dsn, CredentialStore(settings.credentials_file), endpoint.server_key
    )
    return BootstrapResult(endpoint=endpoint, migrations=report, embedded=server)
