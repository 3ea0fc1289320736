"""Migrations: fresh apply, re-apply is a no-op, a changed applied migration is refused, and a
failing migration leaves nothing behind."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import pytest

from symphony.db import MigrationError, SymphonyError, migrate, pending_migrations, test_only
from symphony.db import migration as migration_module
from symphony.db.migration import Migration, load_migrations


@pytest.fixture
async def empty_database(server_admin_dsn: str) -> AsyncIterator[str]:
    name = f"symphony_mig_{uuid.uuid4().hex[:10]}"
    dsn = await test_only.create_database(server_admin_dsn, name)
    try:
        yield dsn
    finally:
        await test_only.drop_database(server_admin_dsn, name)


def test_shipped_migrations_are_numbered_without_gaps() -> None:
    migrations = load_migrations()
    assert [m.version for m in migrations] == list(range(1, len(migrations) + 1))
    assert all(m.sql.lstrip().startswith("--") for m in migrations), "each explains itself"


async def test_fresh_apply_then_reapply_is_a_noop(empty_database: str) -> None:
    shipped = [m.name for m in load_migrations()]
    assert await pending_migrations(empty_database) == shipped

    first = await migrate(empty_database)
    assert first.applied == shipped
    assert first.already_applied == []

    second = await migrate(empty_database)
    assert second.applied == []
    assert second.already_applied == shipped
    assert await pending_migrations(empty_database) == []

    rows = await test_only.query_no_role(
        empty_database,
        "SELECT version, checksum FROM symphony_meta.schema_migrations ORDER BY version",
    )
    assert [(r["version"], r["checksum"]) for r in rows] == [
        (m.version, m.checksum) for m in load_migrations()
    ]


async def test_edited_applied_migration_is_refused(
    empty_database: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    await migrate(empty_database)
    real = load_migrations()
    tampered = [
        Migration(m.version, m.name, m.sql + "\n-- edited after release\n", "0" * 64)
        if m.version == 2 else m
        for m in real
    ]
    monkeypatch.setattr(migration_module, "load_migrations", lambda: tampered)
    with pytest.raises(MigrationError) as info:
        await migrate(empty_database)
    assert info.value.code == "MIGRATION_CHECKSUM_MISMATCH"
    assert "0002_outbox_tables.sql" in info.value.message


async def test_failing_migration_is_not_half_applied(
    empty_database: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    await migrate(empty_database)
    real = load_migrations()
    broken = Migration(
        len(real) + 1, f"{len(real) + 1:04d}_broken.sql",
        "CREATE TABLE symphony_meta.half_applied (id int);\nSELECT 1/0;\n", "f" * 64,
    )
    monkeypatch.setattr(migration_module, "load_migrations", lambda: [*real, broken])
    with pytest.raises(SymphonyError) as info:
        await migrate(empty_database)
    assert info.value.sqlstate == "22012"  # division_by_zero, from the broken migration
    rows = await test_only.query_no_role(
        empty_database,
        "SELECT to_regclass('symphony_meta.half_applied') AS t, "
        "       (SELECT max(version) FROM symphony_meta.schema_migrations) AS v",
    )
    assert rows == [{"t": None, "v": len(real)}]


async def test_database_ahead_of_the_code_is_refused(
    empty_database: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    await migrate(empty_database)
    real = load_migrations()
    monkeypatch.setattr(migration_module, "load_migrations", lambda: real[:-1])
    with pytest.raises(MigrationError) as info:
        await migrate(empty_database)
    assert info.value.code == "MIGRATION_UNKNOWN"
