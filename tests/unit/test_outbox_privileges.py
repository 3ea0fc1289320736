"""Least privilege, proven against the real server: each privilege allowed once, refused once.

Assertions are on the SQLSTATE first (42501 insufficient privilege, P0001 trigger refusal),
with the driver exception in `__cause__` as the fallback evidence.
"""

from __future__ import annotations

import json

import psycopg
import pytest
from tests.support.outbox import instruction

from symphony.db import (
    Database,
    InvariantViolationError,
    PermissionDeniedError,
    Principal,
    Role,
    SymphonyError,
    test_only,
)
from symphony.outbox import OutboxStore

RUNTIME_ROLES = list(Role)
OUTBOX_TABLES = [
    "symphony.payment_outbox_pending",
    "symphony.payment_outbox_attempts",
    "symphony.participant_outbox_sequences",
    "symphony.payment_instruction_registry",
]

PENDING_INSERT = (
    "INSERT INTO symphony.payment_outbox_pending (outbox_id, participant_id, sequence_id) "
    "VALUES (gen_random_uuid(), 'p', 1)"
)


def assert_sqlstate(err: SymphonyError, sqlstate: str) -> None:
    """SQLSTATE first; the original driver error as the fallback."""
    assert err.sqlstate == sqlstate, f"expected {sqlstate}, got {err.sqlstate} ({err.code})"
    assert isinstance(err.__cause__, psycopg.Error)
    assert err.__cause__.sqlstate == sqlstate


async def refused(db: Database, role: Role, statement: str) -> SymphonyError:
    with pytest.raises(SymphonyError) as info:
        await test_only.execute_as_role(db, role, statement)
    return info.value


# -- the pending table is written only through the functions ---------------------------------


async def test_readonly_cannot_insert_into_pending(db: Database) -> None:
    err = await refused(db, Role.READONLY, PENDING_INSERT)
    assert isinstance(err, PermissionDeniedError)
    assert_sqlstate(err, "42501")


async def test_readonly_can_read_pending(db: Database) -> None:
    rows = await test_only.execute_as_role(
        db, Role.READONLY, "SELECT count(*) AS n FROM symphony.payment_outbox_pending"
    )
    assert rows[0]["n"] >= 0


async def test_ingest_cannot_insert_into_pending_directly(db: Database) -> None:
    err = await refused(db, Role.INGEST, PENDING_INSERT)
    assert_sqlstate(err, "42501")


async def test_ingest_enqueues_through_the_function(db: Database) -> None:
    result = await OutboxStore(db).enqueue(instruction())
    assert result.created
    rows = await test_only.query_no_role(
        db.endpoint.admin_dsn,
        "SELECT count(*) AS n FROM symphony.payment_outbox_pending WHERE outbox_id = %s",
        (result.outbox_id,),
    )
    assert rows[0]["n"] == 1


async def test_ingest_cannot_read_anything(db: Database) -> None:
    err = await refused(db, Role.INGEST, "SELECT 1 FROM symphony.payment_outbox_pending")
    assert_sqlstate(err, "42501")


@pytest.mark.parametrize("role", [Role.EXECUTOR, Role.READONLY, Role.AUDITOR, Role.CONTROL])
async def test_only_ingest_may_execute_enqueue(db: Database, role: Role) -> None:
    i = instruction()
    err = await refused(
        db, role,
        "SELECT * FROM symphony.enqueue_payment_outbox("
        f"'{i.instruction_id}', '{i.idempotency_key}', 'p1', 'ACH', "
        f"'{json.dumps(i.payload)}'::jsonb)",
    )
    assert_sqlstate(err, "42501")


async def test_ingest_cannot_claim(db: Database) -> None:
    err = await refused(db, Role.INGEST, "SELECT * FROM symphony.claim_outbox_batch('w', 1, 60)")
    assert_sqlstate(err, "42501")


async def test_readonly_cannot_repair(db: Database) -> None:
    err = await refused(db, Role.READONLY, "SELECT * FROM symphony.repair_expired_leases(1)")
    assert_sqlstate(err, "42501")


async def test_control_can_repair(db: Database) -> None:
    await test_only.execute_as_role(
        db, Role.CONTROL, "SELECT * FROM symphony.repair_expired_leases(1, 86400)"
    )


# -- the ledger is append-only ---------------------------------------------------------------


@pytest.fixture
async def ledger_row(isolated_db: Database) -> str:
    """An item with one DISPATCHING row in the ledger (enqueued and claimed)."""
    store = OutboxStore(isolated_db)
    await store.enqueue(instruction())
    claimed = await store.claim("privilege-test", 1000, 60)
    assert claimed
    return str(claimed[0].outbox_id)


async def test_executor_cannot_update_attempts(isolated_db: Database, ledger_row: str) -> None:
    err = await refused(
        isolated_db, Role.EXECUTOR,
        f"UPDATE symphony.payment_outbox_attempts SET state = 'DISPATCHED' "
        f"WHERE outbox_id = '{ledger_row}'",
    )
    assert_sqlstate(err, "42501")


async def test_executor_cannot_delete_attempts(isolated_db: Database, ledger_row: str) -> None:
    err = await refused(
        isolated_db, Role.EXECUTOR,
        f"DELETE FROM symphony.payment_outbox_attempts WHERE outbox_id = '{ledger_row}'",
    )
    assert_sqlstate(err, "42501")


async def test_executor_reads_queue_counts_through_the_status_view(
    isolated_db: Database, ledger_row: str
) -> None:
    rows = await test_only.execute_as_role(
        isolated_db, Role.EXECUTOR,
        "SELECT dispatching FROM symphony.outbox_supervisor_status",
    )
    assert rows[0]["dispatching"] >= 1


async def test_executor_cannot_read_the_queue_directly(
    isolated_db: Database, ledger_row: str
) -> None:
    err = await refused(
        isolated_db, Role.EXECUTOR,
        f"SELECT claimed_by FROM symphony.payment_outbox_pending WHERE outbox_id = '{ledger_row}'",
    )
    assert_sqlstate(err, "42501")


@pytest.mark.parametrize("role", [Role.EXECUTOR, Role.READONLY, Role.AUDITOR, Role.CONTROL])
@pytest.mark.parametrize(
    "table", ["symphony.payment_outbox_pending", "symphony.payment_outbox_attempts"]
)
async def test_no_role_reads_lease_tokens(
    isolated_db: Database, ledger_row: str, role: Role, table: str
) -> None:
    # A lease token is the capability to complete an item: only its claimer gets it.
    err = await refused(isolated_db, role, f"SELECT lease_token FROM {table}")
    assert_sqlstate(err, "42501")


@pytest.mark.parametrize("role", [Role.READONLY, Role.AUDITOR, Role.CONTROL])
async def test_readers_read_every_other_queue_column(
    isolated_db: Database, ledger_row: str, role: Role
) -> None:
    rows = await test_only.execute_as_role(
        isolated_db, role,
        "SELECT outbox_id, claimed_by, lease_expires_at, needs_lookup "
        f"  FROM symphony.payment_outbox_pending WHERE outbox_id = '{ledger_row}'",
    )
    assert rows[0]["claimed_by"] == "privilege-test"


async def test_ledger_rows_record_the_login_that_wrote_them(
    isolated_db: Database, ledger_row: str
) -> None:
    rows = await test_only.execute_as_role(
        isolated_db, Role.AUDITOR,
        "SELECT recorded_by FROM symphony.payment_outbox_attempts "
        f" WHERE outbox_id = '{ledger_row}'",
    )
    assert rows == [{"recorded_by": "symphony_executor_svc"}]


async def test_rules_fire_even_in_replica_sessions(isolated_db: Database, ledger_row: str) -> None:
    with pytest.raises(InvariantViolationError) as info:
        await test_only.statements_no_role(isolated_db.endpoint.admin_dsn, [
            ("SET LOCAL session_replication_role = replica", None),
            ("DELETE FROM symphony.payment_outbox_attempts WHERE outbox_id = %s", (ledger_row,)),
        ])
    assert_sqlstate(info.value, "P0001")


@pytest.mark.parametrize(
    "statement",
    [
        "UPDATE symphony.payment_outbox_attempts SET error_code = 'x' WHERE outbox_id = '{id}'",
        "DELETE FROM symphony.payment_outbox_attempts WHERE outbox_id = '{id}'",
        "TRUNCATE symphony.payment_outbox_attempts",
        "UPDATE symphony.payment_instruction_registry SET payload = '{{}}' "
        "WHERE outbox_id = '{id}'",
        "DELETE FROM symphony.payment_instruction_registry WHERE outbox_id = '{id}'",
    ],
    ids=["update-ledger", "delete-ledger", "truncate-ledger", "update-registry",
         "delete-registry"],
)
async def test_owner_is_refused_by_the_append_only_trigger(
    isolated_db: Database, ledger_row: str, statement: str
) -> None:
    # The owner holds every privilege on its tables; the trigger still refuses (P0001).
    with pytest.raises(InvariantViolationError) as info:
        await test_only.query_as_owner(
            isolated_db.endpoint.admin_dsn, statement.format(id=ledger_row)
        )
    assert_sqlstate(info.value, "P0001")
    assert info.value.code == "HISTORY_IS_APPEND_ONLY"
    rows = await test_only.query_no_role(
        isolated_db.endpoint.admin_dsn,
        "SELECT state::text AS state FROM symphony.payment_outbox_attempts WHERE outbox_id = %s",
        (ledger_row,),
    )
    assert rows == [{"state": "DISPATCHING"}]


# -- no runtime role can TRUNCATE ------------------------------------------------------------


@pytest.mark.parametrize("table", OUTBOX_TABLES)
@pytest.mark.parametrize("role", RUNTIME_ROLES)
async def test_no_runtime_role_can_truncate(db: Database, role: Role, table: str) -> None:
    err = await refused(db, role, f"TRUNCATE {table}")
    assert_sqlstate(err, "42501")


# -- participant sequences are hidden from readers -------------------------------------------


@pytest.mark.parametrize("role", [Role.READONLY, Role.AUDITOR])
async def test_readers_cannot_read_participant_sequences(db: Database, role: Role) -> None:
    err = await refused(db, role, "SELECT * FROM symphony.participant_outbox_sequences")
    assert_sqlstate(err, "42501")


async def test_control_can_read_participant_sequences(db: Database) -> None:
    await OutboxStore(db).enqueue(instruction())
    rows = await test_only.execute_as_role(
        db, Role.CONTROL, "SELECT count(*) AS n FROM symphony.participant_outbox_sequences"
    )
    assert rows[0]["n"] >= 1


@pytest.mark.parametrize("role", [Role.READONLY, Role.AUDITOR])
async def test_readers_cannot_use_any_sequence_object(db: Database, role: Role) -> None:
    err = await refused(
        db, role,
        "SELECT nextval(pg_get_serial_sequence('symphony.payment_outbox_attempts', 'attempt_id'))",
    )
    assert_sqlstate(err, "42501")


async def test_auditor_reads_the_ledger(db: Database) -> None:
    rows = await test_only.execute_as_role(
        db, Role.AUDITOR, "SELECT count(*) AS n FROM symphony.payment_outbox_attempts"
    )
    assert rows[0]["n"] >= 0


# -- principals switch only to their own role ------------------------------------------------


@pytest.mark.parametrize("target", [Role.EXECUTOR, Role.CONTROL, Role.READONLY])
async def test_ingest_principal_cannot_switch_to_another_role(db: Database, target: Role) -> None:
    with pytest.raises(SymphonyError) as info:
        await test_only.switch_role_as_principal(db, Principal.INGEST, target.value)
    assert_sqlstate(info.value, "42501")


async def test_ingest_principal_can_switch_to_ingest(db: Database) -> None:
    who = await test_only.switch_role_as_principal(db, Principal.INGEST, Role.INGEST.value)
    assert who == Role.INGEST.value


async def test_reader_principal_reaches_both_reader_roles_only(db: Database) -> None:
    for role in (Role.READONLY, Role.AUDITOR):
        assert await test_only.switch_role_as_principal(db, Principal.READER, role.value) == role
    with pytest.raises(SymphonyError) as info:
        await test_only.switch_role_as_principal(db, Principal.READER, Role.EXECUTOR.value)
    assert_sqlstate(info.value, "42501")


async def test_principals_hold_no_privilege_themselves(db: Database) -> None:
    rows = await test_only.query_no_role(
        db.endpoint.admin_dsn,
        "SELECT r.rolname, r.rolinherit, r.rolsuper, r.rolcreaterole, r.rolcreatedb, "
        "       has_table_privilege(r.rolname, 'symphony.payment_outbox_pending', 'SELECT') "
        "         AS can_read_pending, "
        "       has_function_privilege(r.rolname, "
        "         'symphony.enqueue_payment_outbox(text,text,text,text,jsonb)', 'EXECUTE') "
        "         AS can_enqueue "
        "  FROM pg_roles r WHERE r.rolname = ANY(%s) ORDER BY r.rolname",
        ([p.value for p in Principal],),
    )
    assert len(rows) == len(Principal)
    for row in rows:
        assert not row["rolsuper"] and not row["rolcreaterole"] and not row["rolcreatedb"]
        assert not row["can_read_pending"], row["rolname"]
        assert not row["can_enqueue"], row["rolname"]


async def test_principals_authenticate_with_scram_passwords(db: Database) -> None:
    rows = await test_only.query_no_role(
        db.endpoint.admin_dsn,
        "SELECT rolname, left(rolpassword, 14) AS scheme FROM pg_authid WHERE rolname = ANY(%s)",
        ([p.value for p in Principal],),
    )
    assert {r["scheme"] for r in rows} == {"SCRAM-SHA-256$"}


async def test_principal_with_a_wrong_password_is_refused(db: Database) -> None:
    # The admin keeps local trust; a principal must present its password, also on the
    # embedded server.
    conninfo = db.endpoint.dsn_for(Principal.EXECUTOR.value, "not-the-password")
    with pytest.raises(psycopg.OperationalError) as info:
        await psycopg.AsyncConnection.connect(conninfo)
    # libpq reports start-up failures without a SQLSTATE; the server's text is the evidence.
    assert "password authentication failed" in str(info.value)


async def test_principal_with_its_password_connects(db: Database) -> None:
    rows = await test_only.execute_as_role(db, Role.EXECUTOR, "SELECT session_user AS s")
    assert rows == [{"s": Principal.EXECUTOR.value}]
