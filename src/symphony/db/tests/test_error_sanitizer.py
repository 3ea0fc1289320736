"""Errors leave the boundary sanitized: no SQL, table name or value in the public message."""

from __future__ import annotations

import json
import logging

import psycopg
import pytest

from symphony.db import Database, IdempotencyConflictError, Role, SymphonyError, test_only

SECRET = "acct-SECRET-4711"


def assert_public_text_is_clean(err: SymphonyError, *forbidden: str) -> None:
    public = f"{err} {err.message} {err.as_dict()}"
    for word in forbidden:
        assert word.lower() not in public.lower(), f"{word!r} leaked into {public!r}"


async def test_failed_query_message_has_no_sql_table_or_value(db: Database) -> None:
    statement = (
        "INSERT INTO symphony.payment_outbox_pending (outbox_id, participant_id, sequence_id) "
        f"VALUES (gen_random_uuid(), '{SECRET}', 1)"
    )
    with pytest.raises(SymphonyError) as info:
        await test_only.execute_as_role(db, Role.READONLY, statement)
    err = info.value
    # The driver's own text names the table; the public one must not.
    assert "payment_outbox_pending" in str(err.__cause__)
    assert_public_text_is_clean(err, "INSERT", "payment_outbox_pending", "symphony.", SECRET)
    assert err.sqlstate == "42501"
    assert isinstance(err.__cause__, psycopg.Error)
    assert err.incident_id and err.context


async def test_refused_enqueue_names_the_problem_without_the_values(db: Database) -> None:
    params = {
        "instruction_id": "instr-sanitizer", "idempotency_key": "k-sanitizer",
        "participant_id": "p1", "rail_type": "ACH",
        "payload": json.dumps({"amount": "1.00", "currency": "EUR", "destination": SECRET}),
    }
    await db.fetch_one(Role.INGEST, "enqueue_payment_outbox", params)
    changed = {**params, "payload": json.dumps(
        {"amount": "999.00", "currency": "EUR", "destination": SECRET})}
    with pytest.raises(IdempotencyConflictError) as info:
        await db.fetch_one(Role.INGEST, "enqueue_payment_outbox", changed)
    err = info.value
    assert err.sqlstate == "SY100"
    assert err.code == "IDEMPOTENCY_KEY_REUSED"
    assert_public_text_is_clean(err, SECRET, "999.00", "k-sanitizer", "registry", "SELECT")
    assert isinstance(err.__cause__, psycopg.Error)


async def test_full_detail_is_logged_under_the_incident_id(
    db: Database, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="symphony.db")
    with pytest.raises(SymphonyError) as info:
        await test_only.execute_as_role(
            db, Role.AUDITOR, "SELECT * FROM symphony.participant_outbox_sequences"
        )
    logged = [r.getMessage() for r in caplog.records if info.value.incident_id in r.getMessage()]
    assert logged, "the incident id must lead to the logged detail"
    assert "participant_outbox_sequences" in logged[0]
    assert "42501" in logged[0]


async def test_unique_violation_maps_by_constraint_name(db: Database) -> None:
    # Disabling the transition trigger (inside a rolled-back transaction) shows the unique
    # index on its own: it is translated by its name, not by message text.
    row = await db.fetch_one(Role.INGEST, "enqueue_payment_outbox", {
        "instruction_id": "instr-unique-map", "idempotency_key": "k-unique-map",
        "participant_id": "p1", "rail_type": "ACH",
        "payload": json.dumps({"amount": "1.00", "currency": "EUR", "destination": "d"}),
    })
    assert row is not None
    outbox_id = row["outbox_id"]
    with pytest.raises(SymphonyError) as info:
        await test_only.statements_no_role(db.endpoint.admin_dsn, [
            ("ALTER TABLE symphony.payment_outbox_attempts "
             "DISABLE TRIGGER payment_outbox_attempts_legal_transition", None),
            ("INSERT INTO symphony.payment_outbox_attempts "
             "  (outbox_id, attempt_no, state, rail_transaction_id) "
             "VALUES (%(id)s, 1001, 'DISPATCHED', 'rtx-1'), (%(id)s, 1002, 'DISPATCHED', 'rtx-2')",
             {"id": outbox_id}),
        ])
    assert info.value.sqlstate == "23505"
    assert info.value.code == "DUPLICATE_DISPATCHED"
    assert_public_text_is_clean(info.value, "payment_outbox_attempts", "INSERT", str(outbox_id))
