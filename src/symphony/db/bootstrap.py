"""Bring a server to a usable state: find or start it, migrate it, provision the principals.

Provisioning (random passwords, kept in the credentials file) is for the embedded server and
development. In production the operator sets each principal's password (see
docs/deployment.md) and the migration job runs with `provision=False`: a job with an empty
`SYMPHONY_HOME` would otherwise give every principal a new password and lock out the services.
"""

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
    provisioned: bool = True


async def bootstrap(
    settings: DatabaseSettings,
    *,
    embedded: EmbeddedServer | None = None,
    provision: bool = True,
) -> BootstrapResult:
    """Resolve the server, apply pending migrations and, with `provision`, (re)provision the
    principals' passwords into the credentials file."""
    endpoint, server = await resolve_endpoint(settings, embedded=embedded)
    report = await migrate(endpoint.admin_dsn)
    if provision:
        await provision_principals(
            endpoint.admin_dsn, CredentialStore(settings.credentials_file), endpoint.server_key
        )
    return BootstrapResult(endpoint=endpoint, migrations=report, embedded=server,
                           provisioned=provision)
