"""A pooled connection goes back idle and roleless, whatever happened on it."""

from __future__ import annotations

import json

import pytest

from symphony.db import (
    Database,
    DatabaseSettings,
    Principal,
    Role,
    RoleError,
    SymphonyError,
    test_only,
)


@pytest.fixture
async def one_conn_db(db_settings: DatabaseSettings) -> Database:
    """A Database whose pools hold exactly one connection, so reuse is certain."""
    settings = db_settings.model_copy(update={"pool_min_size": 1, "pool_max_size": 1})
    database = await Database.open(settings)
    yield database  # type: ignore[misc]
    await database.close()


async def _assert_roleless(db: Database, principal: Principal, expected_pid: int) -> None:
    ident = await test_only.pooled_identity(db, principal)
    assert ident.backend_pid == expected_pid, "the pool should have reused the same connection"
    assert ident.current_user == principal.value
    assert ident.session_user == principal.value


async def test_role_is_gone_after_successful_query(one_conn_db: Database) -> None:
    before = await test_only.pooled_identity(one_conn_db, Principal.READER)
    row = await one_conn_db.fetch_one(Role.READONLY, "supervisor_status")
    assert row is not None
    await _assert_roleless(one_conn_db, Principal.READER, before.backend_pid)


async def test_role_is_gone_after_failed_query(one_conn_db: Database) -> None:
    before = await test_only.pooled_identity(one_conn_db, Principal.INGEST)
    bad = {"instruction_id": "", "idempotency_key": "k", "participant_id": "p",
           "rail_type": "ACH", "payload": json.dumps({})}
    with pytest.raises(SymphonyError) as info:
        await one_conn_db.fetch_one(Role.INGEST, "enqueue_payment_outbox", bad)
    assert info.value.sqlstate == "SY011"
    await _assert_roleless(one_conn_db, Principal.INGEST, before.backend_pid)


async def test_role_is_gone_after_failed_transaction(one_conn_db: Database) -> None:
    before = await test_only.pooled_identity(one_conn_db, Principal.EXECUTOR)

    class Boom(Exception):
        pass

    with pytest.raises(Boom):
        async with one_conn_db.transaction(Role.EXECUTOR) as tx:
            await tx.fetch_one("count_zombies")
            raise Boom
    await _assert_roleless(one_conn_db, Principal.EXECUTOR, before.backend_pid)


async def test_session_role_left_on_a_connection_is_reset_by_the_pool(
    one_conn_db: Database,
) -> None:
    pid = await test_only.plant_session_role(one_conn_db, Principal.READER, Role.AUDITOR)
    await _assert_roleless(one_conn_db, Principal.READER, pid)


async def test_connection_that_cannot_be_reset_is_discarded(one_conn_db: Database) -> None:
    dead_pid = await test_only.break_pooled_connection_during_use(one_conn_db, Principal.READER)
    ident = await test_only.pooled_identity(one_conn_db, Principal.READER)
    assert ident.backend_pid != dead_pid
    assert ident.current_user == Principal.READER.value


async def test_nested_transactions_are_refused(db: Database) -> None:
    async with db.transaction(Role.READONLY):
        with pytest.raises(RoleError) as info:
            async with db.transaction(Role.READONLY):
                pass
    assert info.value.code == "NESTED_TRANSACTION"


async def test_unknown_role_never_reaches_the_server(db_settings: DatabaseSettings) -> None:
    database = await Database.open(db_settings)
    try:
        with pytest.raises(RoleError) as info:
            await database.fetch_one("symphony_owner", "supervisor_status")  # type: ignore[arg-type]
        assert info.value.code == "UNKNOWN_ROLE"
        assert info.value.sqlstate is None
        # No pool was even opened: the refusal happened before any connection was made.
        assert test_only.pool_size(database, Principal.READER) == 0
        assert database.pool_stats() == {}
    finally:
        await database.close()


async def test_transaction_runs_as_its_role(db: Database) -> None:
    rows = await test_only.execute_as_role(db, Role.AUDITOR, "SELECT current_user AS u")
    assert rows == [{"u": "symphony_auditor"}]
