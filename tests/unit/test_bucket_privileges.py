"""Least privilege of the distribution-keys migration: each new function and column is granted
to exactly the roles that need it, each privilege allowed once and refused once (42501).

The session database holds other tests' items, which a claim or repair must not take: the
allowed calls of claim and repair pass a limit of 0, refused by the function's own check
(SY021) after the privilege check let the call in; the completion names an unknown lease and
is answered FENCED, writing nothing.
"""

from __future__ import annotations

import psycopg
import pytest

from symphony.db import (
    Database,
    InvalidRequestError,
    PermissionDeniedError,
    Role,
    SymphonyError,
    test_only,
)

CLAIM = "SELECT * FROM symphony.claim_outbox_batch('priv-w', 0, 60, 0, 0)"
REPAIR = "SELECT * FROM symphony.repair_expired_leases(0, 86400, 0, 0)"
COMPLETE = (
    "SELECT * FROM symphony.complete_outbox_batch(ARRAY[gen_random_uuid()], "
    "ARRAY[gen_random_uuid()], ARRAY['DISPATCHED'], ARRAY[NULL::text], ARRAY[NULL::text], "
    "ARRAY[false], ARRAY[NULL::text], 0, 0)"
)


async def _let_in(db: Database, role: Role, statement: str) -> None:
    """The call passed the privilege check: the function's own argument check answered."""
    with pytest.raises(InvalidRequestError) as info:
        await test_only.execute_as_role(db, role, statement)
    assert info.value.sqlstate == "SY021"


async def _refused(db: Database, role: Role, statement: str) -> None:
    with pytest.raises(SymphonyError) as info:
        await test_only.execute_as_role(db, role, statement)
    assert isinstance(info.value, PermissionDeniedError)
    assert info.value.sqlstate == "42501"
    assert isinstance(info.value.__cause__, psycopg.Error)


async def test_executor_may_claim_by_bucket(db: Database) -> None:
    await _let_in(db, Role.EXECUTOR, CLAIM)


@pytest.mark.parametrize("role", [Role.INGEST, Role.READONLY, Role.AUDITOR, Role.CONTROL])
async def test_no_other_role_may_claim_by_bucket(db: Database, role: Role) -> None:
    await _refused(db, role, CLAIM)


async def test_executor_may_complete_by_bucket(db: Database) -> None:
    [row] = await test_only.execute_as_role(db, Role.EXECUTOR, COMPLETE)
    assert row["result"] == "FENCED"  # an unknown lease writes nothing


@pytest.mark.parametrize("role", [Role.INGEST, Role.READONLY, Role.AUDITOR, Role.CONTROL])
async def test_no_other_role_may_complete_by_bucket(db: Database, role: Role) -> None:
    await _refused(db, role, COMPLETE)


@pytest.mark.parametrize("role", [Role.EXECUTOR, Role.CONTROL])
async def test_executor_and_control_may_repair_by_bucket(db: Database, role: Role) -> None:
    await _let_in(db, role, REPAIR)


@pytest.mark.parametrize("role", [Role.INGEST, Role.READONLY, Role.AUDITOR])
async def test_no_other_role_may_repair_by_bucket(db: Database, role: Role) -> None:
    await _refused(db, role, REPAIR)


@pytest.mark.parametrize("role", list(Role))
async def test_no_role_may_call_the_fill_trigger_function(db: Database, role: Role) -> None:
    rows = await test_only.execute_as_role(
        db, role,
        "SELECT has_function_privilege(current_user, "
        "'symphony.fill_participant_from_registry()', 'EXECUTE') AS allowed")
    assert rows == [{"allowed": False}]


@pytest.mark.parametrize("role", [Role.READONLY, Role.AUDITOR, Role.CONTROL])
async def test_readers_read_the_ledger_participant_and_the_bucket(db: Database,
                                                                  role: Role) -> None:
    await test_only.execute_as_role(
        db, role, "SELECT participant_id FROM symphony.payment_outbox_attempts LIMIT 1")
    await test_only.execute_as_role(
        db, role, "SELECT bucket FROM symphony.payment_outbox_pending LIMIT 1")
    await test_only.execute_as_role(
        db, role, "SELECT participant_id, bucket FROM symphony.participants LIMIT 1")


@pytest.mark.parametrize("role", [Role.INGEST, Role.EXECUTOR])
async def test_writers_read_neither(db: Database, role: Role) -> None:
    await _refused(db, role, "SELECT participant_id FROM symphony.payment_outbox_attempts")
    await _refused(db, role, "SELECT bucket FROM symphony.payment_outbox_pending")


async def test_participant_buckets_query_is_for_readers_and_control(db: Database) -> None:
    rows = await db.fetch_all(Role.CONTROL, "participant_buckets")
    assert rows and all(0 <= int(str(r["bucket"])) <= 255 for r in rows)
    with pytest.raises(PermissionDeniedError):
        await db.fetch_all(Role.INGEST, "participant_buckets")
