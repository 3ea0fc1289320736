"""Who may use what the tamper-evident ledger and the audit added: each privilege allowed once,
refused once (42501), like tests/unit/test_outbox_privileges.py; and the new history tables
are append-only for the owner too."""

from __future__ import annotations

import psycopg
import pytest
from tests.support.outbox import instruction

from symphony.db import Database, InvariantViolationError, Role, SymphonyError, test_only
from symphony.outbox import AuditStore, Completion, OutboxStore, Outcome

AUDIT_FUNCTIONS = {
    "audit_sequence_violations":
        "SELECT count(*) AS n FROM symphony.audit_sequence_violations(NULL, 10)",
    "audit_lease_violations":
        "SELECT count(*) AS n FROM symphony.audit_lease_violations(NULL, 10)",
    "audit_sequence_violations_in":
        "SELECT count(*) AS n FROM symphony.audit_sequence_violations_in("
        "ARRAY[gen_random_uuid()], 10)",
    "audit_lease_violations_in":
        "SELECT count(*) AS n FROM symphony.audit_lease_violations_in("
        "ARRAY[gen_random_uuid()], 10)",
}

# Internal helpers: the owner's triggers and functions call them; no runtime role may.
OWNER_ONLY_FUNCTIONS = {
    "digest_field": "SELECT symphony.digest_field('x') AS v",
    "digest_micros": "SELECT symphony.digest_micros(now()) AS v",
    "instruction_digest": "SELECT symphony.instruction_digest(gen_random_uuid(), 'p', 'i', 'k', "
                          "'RTP', '{}'::jsonb, now()) AS v",
    "attempt_digest": "SELECT symphony.attempt_digest(NULL, gen_random_uuid(), 1, "
                      "'DISPATCHING', 'w', NULL, NULL, NULL, now(), 'u', NULL) AS v",
    "audit_scope": "SELECT count(*) AS v FROM symphony.audit_scope(now())",
}

HISTORY_TABLES = [
    "symphony.ledger_checkpoints",
    "symphony.ledger_checkpoint_heads",
    "symphony.outbox_lookup_marks",
]


def assert_sqlstate(err: SymphonyError, sqlstate: str) -> None:
    assert err.sqlstate == sqlstate, f"expected {sqlstate}, got {err.sqlstate} ({err.code})"
    assert isinstance(err.__cause__, psycopg.Error)
    assert err.__cause__.sqlstate == sqlstate


async def refused(db: Database, role: Role, statement: str) -> SymphonyError:
    with pytest.raises(SymphonyError) as info:
        await test_only.execute_as_role(db, role, statement)
    return info.value


# -- checkpoints: control takes them, the auditor reads them ------------------------------------


async def test_control_takes_a_checkpoint(isolated_db: Database) -> None:
    checkpoint = await AuditStore(isolated_db).checkpoint()
    assert checkpoint.checkpoint_id >= 1 and len(checkpoint.checkpoint_digest) == 64


@pytest.mark.parametrize("role", [Role.EXECUTOR, Role.AUDITOR, Role.READONLY, Role.INGEST])
async def test_other_roles_cannot_take_a_checkpoint(isolated_db: Database, role: Role) -> None:
    err = await refused(isolated_db, role, "SELECT * FROM symphony.take_ledger_checkpoint()")
    assert_sqlstate(err, "42501")


async def test_a_checkpoint_needs_read_committed(isolated_db: Database) -> None:
    with pytest.raises(SymphonyError) as info:
        # A snapshot transaction (REPEATABLE READ) is refused before anything is read.
        async with isolated_db.transaction(Role.CONTROL, snapshot=True) as tx:
            await tx.fetch_one("take_ledger_checkpoint")
    assert info.value.sqlstate == "SY050"
    assert info.value.code == "CHECKPOINT_NEEDS_READ_COMMITTED"


@pytest.mark.parametrize("role", [Role.AUDITOR, Role.CONTROL])
@pytest.mark.parametrize("table", ["symphony.ledger_checkpoints",
                                   "symphony.ledger_checkpoint_heads"])
async def test_auditor_and_control_read_checkpoints(
    isolated_db: Database, role: Role, table: str
) -> None:
    rows = await test_only.execute_as_role(isolated_db, role, f"SELECT count(*) AS n FROM {table}")
    assert rows[0]["n"] >= 0


@pytest.mark.parametrize("role", [Role.READONLY, Role.EXECUTOR, Role.INGEST])
@pytest.mark.parametrize("table", ["symphony.ledger_checkpoints",
                                   "symphony.ledger_checkpoint_heads"])
async def test_other_roles_cannot_read_checkpoints(
    isolated_db: Database, role: Role, table: str
) -> None:
    err = await refused(isolated_db, role, f"SELECT count(*) FROM {table}")
    assert_sqlstate(err, "42501")


async def test_auditor_exports_checkpoints(isolated_db: Database) -> None:
    taken = await AuditStore(isolated_db).checkpoint()
    exported = await AuditStore(isolated_db).checkpoints()
    assert exported[-1].checkpoint_digest == taken.checkpoint_digest


# -- the audit functions: the auditor's only ----------------------------------------------------


@pytest.mark.parametrize("name", AUDIT_FUNCTIONS)
async def test_auditor_runs_the_audit_functions(db: Database, name: str) -> None:
    rows = await test_only.execute_as_role(db, Role.AUDITOR, AUDIT_FUNCTIONS[name])
    assert rows[0]["n"] >= 0


@pytest.mark.parametrize("role", [Role.READONLY, Role.CONTROL, Role.EXECUTOR, Role.INGEST])
@pytest.mark.parametrize("name", AUDIT_FUNCTIONS)
async def test_other_roles_cannot_run_the_audit_functions(
    db: Database, name: str, role: Role
) -> None:
    err = await refused(db, role, AUDIT_FUNCTIONS[name])
    assert_sqlstate(err, "42501")


@pytest.mark.parametrize("name", OWNER_ONLY_FUNCTIONS)
async def test_the_owner_runs_the_digest_helpers(db: Database, name: str) -> None:
    assert db.endpoint is not None
    rows = await test_only.query_as_owner(db.endpoint.admin_dsn, OWNER_ONLY_FUNCTIONS[name])
    assert rows[0]["v"] is not None


@pytest.mark.parametrize("role", list(Role))
@pytest.mark.parametrize("name", OWNER_ONLY_FUNCTIONS)
async def test_no_runtime_role_runs_the_digest_helpers(
    db: Database, name: str, role: Role
) -> None:
    err = await refused(db, role, OWNER_ONLY_FUNCTIONS[name])
    assert_sqlstate(err, "42501")


# -- digests: readable by the auditor (what it recomputes), by no other reader -------------------


async def test_auditor_reads_the_digests(db: Database) -> None:
    rows = await test_only.execute_as_role(
        db, Role.AUDITOR,
        "SELECT (SELECT count(row_digest) FROM symphony.payment_outbox_attempts) AS rows, "
        "       (SELECT count(lease_digest) FROM symphony.payment_outbox_attempts) AS leases, "
        "       (SELECT count(instruction_digest) FROM symphony.payment_instruction_registry)"
        "       AS items")
    assert rows[0]["items"] >= 0


@pytest.mark.parametrize("role", [Role.READONLY, Role.EXECUTOR, Role.INGEST])
@pytest.mark.parametrize("statement", [
    "SELECT row_digest FROM symphony.payment_outbox_attempts LIMIT 1",
    "SELECT lease_digest FROM symphony.payment_outbox_attempts LIMIT 1",
    "SELECT instruction_digest FROM symphony.payment_instruction_registry LIMIT 1",
])
async def test_other_readers_cannot_read_the_digests(
    db: Database, role: Role, statement: str
) -> None:
    err = await refused(db, role, statement)
    assert_sqlstate(err, "42501")


async def test_the_auditor_still_cannot_read_lease_tokens(db: Database) -> None:
    err = await refused(db, Role.AUDITOR,
                        "SELECT lease_token FROM symphony.payment_outbox_attempts LIMIT 1")
    assert_sqlstate(err, "42501")


# -- lookup marks: the readers read them ---------------------------------------------------------


@pytest.mark.parametrize("role", [Role.AUDITOR, Role.READONLY, Role.CONTROL])
async def test_readers_read_lookup_marks(db: Database, role: Role) -> None:
    rows = await test_only.execute_as_role(
        db, role, "SELECT count(*) AS n FROM symphony.outbox_lookup_marks")
    assert rows[0]["n"] >= 0


@pytest.mark.parametrize("role", [Role.EXECUTOR, Role.INGEST])
async def test_writers_cannot_read_lookup_marks(db: Database, role: Role) -> None:
    err = await refused(db, role, "SELECT count(*) FROM symphony.outbox_lookup_marks")
    assert_sqlstate(err, "42501")


# -- the new history: written only by the owner's functions and triggers, never rewritten ------


@pytest.mark.parametrize("role", list(Role))
@pytest.mark.parametrize("table", HISTORY_TABLES)
async def test_no_runtime_role_deletes_history(db: Database, role: Role, table: str) -> None:
    err = await refused(db, role, f"DELETE FROM {table}")
    assert_sqlstate(err, "42501")


@pytest.mark.parametrize("role", list(Role))
async def test_no_runtime_role_writes_a_checkpoint_directly(db: Database, role: Role) -> None:
    err = await refused(
        db, role,
        "INSERT INTO symphony.ledger_checkpoints (checkpoint_id, taken_at, up_to_attempt_id, "
        "row_count, item_count, heads_digest, checkpoint_digest, taken_by) "
        "VALUES (999999, now(), 0, 0, 0, '\\x00', '\\x00', 'x')")
    assert_sqlstate(err, "42501")


@pytest.mark.parametrize("table", HISTORY_TABLES)
async def test_not_even_the_owner_rewrites_the_new_history(
    isolated_db: Database, table: str
) -> None:
    # A lookup mark (an ambiguous outcome) and a checkpoint head (the item moved) to refuse.
    store = OutboxStore(isolated_db)
    await store.enqueue(instruction())
    claimed = await store.claim("priv-w", 100, 60)
    await store.complete_batch([Completion(c.outbox_id, c.lease_token, Outcome.RETRYABLE,
                                           error_code="TIMEOUT", ambiguous=True)
                                for c in claimed])
    await AuditStore(isolated_db).checkpoint()
    assert isolated_db.endpoint is not None
    for statement in (f"DELETE FROM {table}", f"TRUNCATE {table} CASCADE"):
        with pytest.raises(InvariantViolationError) as info:
            await test_only.query_as_owner(isolated_db.endpoint.admin_dsn, statement)
        assert info.value.sqlstate == "P0001"


async def test_the_owner_cannot_edit_a_checkpoint(isolated_db: Database) -> None:
    await AuditStore(isolated_db).checkpoint()
    assert isolated_db.endpoint is not None
    with pytest.raises(InvariantViolationError) as info:
        await test_only.query_as_owner(
            isolated_db.endpoint.admin_dsn,
            "UPDATE symphony.ledger_checkpoints SET row_count = row_count + 1")
    assert info.value.sqlstate == "P0001"
    assert info.value.code == "HISTORY_IS_APPEND_ONLY"
