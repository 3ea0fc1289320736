"""Bad configuration gets a clear error with a code, and no secret is echoed back."""

from __future__ import annotations

import os
import socket

import pytest

from symphony.db import (
    ConfigurationError,
    Database,
    DatabaseSettings,
    DatabaseUnavailableError,
    MigrationError,
    UnsupportedServerError,
    migrate,
    server,
    test_only,
)
from symphony.db.compat import MIN_SERVER_VERSION
from symphony.db.server import parse_database_url, require_supported_version


@pytest.mark.parametrize(
    "url",
    ["postgresql://user:hunter2@host:notaport/db", "mysql://user:hunter2@host/db",
     "host=x port", "   "],
)
def test_malformed_database_url_is_refused(url: str) -> None:
    with pytest.raises(ConfigurationError) as info:
        parse_database_url(url)
    assert info.value.code == "INVALID_DATABASE_URL"
    assert "hunter2" not in str(info.value)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_unreachable_server_is_named(tmp_path: object) -> None:
    port = _free_port()
    settings = DatabaseSettings(
        DATABASE_URL=f"postgresql://admin:hunter2@127.0.0.1:{port}/symphony",
        SYMPHONY_DB_CONNECT_TIMEOUT_S=2,
    )
    with pytest.raises(DatabaseUnavailableError) as info:
        await Database.open(settings)
    assert info.value.code == "DATABASE_UNREACHABLE"
    assert f"127.0.0.1:{port}" in info.value.message
    assert "hunter2" not in str(info.value)


@pytest.mark.parametrize(
    ("variable", "value"),
    [("SYMPHONY_DB_STATEMENT_TIMEOUT_MS", "0"), ("SYMPHONY_DB_POOL_MAX_SIZE", "many")],
)
def test_invalid_settings_are_start_up_errors(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str
) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(ValueError, match=variable):
        DatabaseSettings()


async def test_unmigrated_database_is_a_clear_error(
    server_admin_dsn: str, symphony_home: object
) -> None:
    name = "symphony_unmigrated"
    dsn = await test_only.create_database(server_admin_dsn, name)
    try:
        settings = DatabaseSettings(DATABASE_URL=dsn, SYMPHONY_HOME=str(symphony_home))
        with pytest.raises(MigrationError) as info:
            await Database.open(settings)
        assert info.value.code == "MIGRATIONS_PENDING"
        assert "symphony migrate" in info.value.message
    finally:
        await test_only.drop_database(server_admin_dsn, name)


async def test_server_reports_supported_version(db: Database) -> None:
    assert db.endpoint.server_version >= MIN_SERVER_VERSION
    # scripts/pg_versions.py names the major version each CI run is meant to be on.
    expected = os.environ.get("SYMPHONY_PG_MAJOR")
    if expected:
        assert db.endpoint.server_version // 10000 == int(expected)


@pytest.mark.parametrize("version", [90624, 120019, 130021, 140018, 149999])
def test_server_older_than_15_is_refused(version: int) -> None:
    with pytest.raises(UnsupportedServerError) as info:
        require_supported_version(version, "db.example:5432")
    assert info.value.code == "UNSUPPORTED_SERVER_VERSION"
    assert f"PostgreSQL {version // 10000} " in info.value.message
    assert "15 or newer" in info.value.message


@pytest.mark.parametrize("version", [150000, 150018, 160014, 170005, 180006, 190001])
def test_server_15_or_newer_is_accepted(version: int) -> None:
    require_supported_version(version, "db.example:5432")


async def test_a_real_server_below_the_minimum_is_refused_at_start_up(
    db_settings: DatabaseSettings, db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The real server this run is on, with the minimum raised just past it: start-up and the
    # migrator both refuse it with the code, before touching anything.
    version = db.endpoint.server_version
    monkeypatch.setattr(server, "MIN_SERVER_VERSION", version + 1)
    with pytest.raises(UnsupportedServerError) as info:
        await Database.open(db_settings)
    assert info.value.code == "UNSUPPORTED_SERVER_VERSION"
    assert f"PostgreSQL {version // 10000} " in info.value.message
    with pytest.raises(UnsupportedServerError) as info:
        await migrate(db.endpoint.admin_dsn)
    assert info.value.code == "UNSUPPORTED_SERVER_VERSION"
